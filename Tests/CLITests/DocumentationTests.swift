import Foundation
import TestSupport
import Testing

@Suite("README")
struct DocumentationTests {
    let readme = (try? String(contentsOfFile: packageRoot + "/README.md", encoding: .utf8)) ?? ""

    @Test("the README starts with the two commands for a fresh machine")
    func twoCommands() {
        #expect(readme.contains("swift run portreuse demo"))
        #expect(readme.contains("swift test"))
    }

    @Test("the quick start in the README is the example that compiles, and it runs")
    func quickStart() throws {
        let example = try String(contentsOfFile: packageRoot + "/Examples/quickstart/main.swift", encoding: .utf8)
        let block = try #require(readme.components(separatedBy: "```swift\nimport PortReuse\n").dropFirst().first?.components(separatedBy: "```").first)
        #expect("import PortReuse\n" + block == example)
        let (status, output) = try run([productsFolder + "/quickstart"])
        #expect(status == 0)
        #expect(output.contains("dialled from 127.0.0.1:"))
        #expect(output.contains("UDP options SO_REUSEPORT"))
        #expect(output.contains("address already in use (EADDRINUSE). It is held by quickstart"))
        #expect(output.contains("taken, by quickstart (pid "), "a sentence, not an enum case: \(output)")
    }

    /// A page of docs/.
    static func page(_ name: String) throws -> String { try String(contentsOfFile: packageRoot + "/docs/" + name, encoding: .utf8) }

    @Test("docs/library.md's PortReuseNIO block is Examples/nio-snippet/main.swift, which the build compiles")
    func nioSnippet() throws {
        let example = try String(contentsOfFile: packageRoot + "/Examples/nio-snippet/main.swift", encoding: .utf8)
        let library = try Self.page("library.md")
        let block = try #require(library.components(separatedBy: "```swift\nimport NIOCore\n").dropFirst().first?.components(separatedBy: "```").first)
        #expect("import NIOCore\n" + block == example)
        #expect(FileManager.default.isExecutableFile(atPath: productsFolder + "/nio-snippet"), "the snippet did not build")
    }

    @Test("the DocC catalog lists every public type of the library, and only those (scripts/docs builds it)")
    func doccCatalog() throws {
        let catalog = try String(contentsOfFile: packageRoot + "/Sources/PortReuse/PortReuse.docc/PortReuse.md", encoding: .utf8)
        let listed = Set(catalog.components(separatedBy: "\n- ``").dropFirst().compactMap { $0.components(separatedBy: "``").first })
        var declared: Set<String> = []
        let folder = packageRoot + "/Sources/PortReuse"
        for file in FileManager.default.enumerator(atPath: folder)?.compactMap({ $0 as? String }) ?? [] where file.hasSuffix(".swift") {
            let text = try String(contentsOfFile: folder + "/" + file, encoding: .utf8)
            for line in text.split(separator: "\n") where line.hasPrefix("public ") {
                let words = line.split(whereSeparator: { " :<{=".contains($0) })
                guard let kind = words.firstIndex(where: { ["struct", "enum", "class", "protocol", "typealias"].contains($0) }), kind + 1 < words.count
                else { continue }
                declared.insert(String(words[kind + 1]))
            }
        }
        #expect(declared.count >= 25, "found \(declared.sorted())")
        #expect(declared.subtracting(listed).isEmpty, "public types missing from the catalog: \(declared.subtracting(listed).sorted())")
        #expect(listed.subtracting(declared).isEmpty, "the catalog lists what the library does not declare: \(listed.subtracting(declared).sorted())")
    }

    @Test("docs/run.md's table of shim variables names every variable the shim reads")
    func shimVariables() throws {
        let source = try String(contentsOfFile: packageRoot + "/Sources/CReuseShim/shim.c", encoding: .utf8)
        let reads = source.split(separator: "\n").filter { $0.contains("variable(\"") || $0.contains("read_boolean(\"") || $0.contains("read_endpoint(&") }
        let names = Set(reads.flatMap { line in
            line.split(separator: "\"").enumerated().filter { $0.offset % 2 == 1 }.map(\.element)
                .filter { $0.count > 3 && $0.allSatisfy { $0.isUppercase || $0 == "_" } }.map(String.init)
        })
        #expect(names.count >= 9, "found \(names.sorted())")
        let section = try Self.page("run.md")
        for name in names { #expect(section.contains("`\(name)`"), "\(name) is read by the shim but not in docs/run.md") }
    }

    @Test("every link between the README and docs/ reaches a page, and a heading in it")
    func links() throws {
        let pages = ["README.md"] + (try FileManager.default.contentsOfDirectory(atPath: packageRoot + "/docs")).filter { $0.hasSuffix(".md") }.map { "docs/" + $0 }
        #expect(pages.count >= 8)
        func anchors(_ text: String) -> Set<String> {
            var inFence = false
            var found: Set<String> = []
            for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
                if line.hasPrefix("```") { inFence.toggle() }
                guard !inFence, line.hasPrefix("#") else { continue }
                let title = line.drop { $0 == "#" }.trimmingCharacters(in: .whitespaces).lowercased()
                found.insert(String(title.filter { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == " " }).replacingOccurrences(of: " ", with: "-"))
            }
            return found
        }
        for page in pages {
            let text = try String(contentsOfFile: packageRoot + "/" + page, encoding: .utf8)
            for match in text.matches(of: /\]\(([^)\s]+)\)/) {
                let target = String(match.1)
                guard !target.hasPrefix("http") else { continue }
                let parts = target.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
                let folder = (page as NSString).deletingLastPathComponent
                let file = parts[0].isEmpty ? page : ((folder as NSString).appendingPathComponent(parts[0]) as NSString).standardizingPath
                let contents = try? String(contentsOfFile: packageRoot + "/" + file, encoding: .utf8)
                #expect(contents != nil, "\(page) links to \(target): no file \(file)")
                if parts.count == 2, let contents { #expect(anchors(contents).contains(parts[1]), "\(page) links to \(target): no such heading in \(file)") }
            }
        }
    }

    @Test("no file above the system layer imports libc or the C module: the tools reach the kernel through PortReuseSystem and the library")
    func layers() throws {
        let above = ["Sources/PortReuseInterception", "Sources/PortReuseTools", "Sources/portreuse", "Sources/DemoServer"]
        var offenders: [String] = []
        for folder in above {
            let enumerator = try #require(FileManager.default.enumerator(atPath: packageRoot + "/" + folder))
            for case let file as String in enumerator where file.hasSuffix(".swift") {
                let text = try String(contentsOfFile: packageRoot + "/\(folder)/\(file)", encoding: .utf8)
                let imports = text.split(separator: "\n").filter { line in
                    ["import Glibc", "import Darwin", "import Musl", "import CPortReuseSystem"].contains { line.hasSuffix($0) }
                }
                if !imports.isEmpty { offenders.append("\(folder)/\(file): \(imports.joined(separator: ", "))") }
            }
        }
        #expect(offenders.isEmpty, "\(offenders)")
        #expect(above.allSatisfy { FileManager.default.fileExists(atPath: packageRoot + "/" + $0) })
    }

    @Test("portreuse --help and --version work")
    func help() throws {
        let (status, output) = try run([productsFolder + "/portreuse", "--help"])
        #expect(status == 0)
        #expect(output.contains("unsafe-any-user"))
        let version = try run([productsFolder + "/portreuse", "--version"])
        #expect(version.status == 0)
        // "0.1.0 (commit …)": a version Debian accepts, then where it was built from.
        #expect(version.output.prefixMatch(of: /[0-9]+\.[0-9]+\.[0-9]+[0-9A-Za-z.+~-]* \(commit [^)]+\)/) != nil, "\(version.output)")
    }
}
