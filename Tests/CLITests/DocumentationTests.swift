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
    }

    @Test("portreuse --help and --version work")
    func help() throws {
        let (status, output) = try run([productsFolder + "/portreuse", "--help"])
        #expect(status == 0)
        #expect(output.contains("unsafe-any-user"))
        let version = try run([productsFolder + "/portreuse", "--version"])
        #expect(version.status == 0)
        #expect(version.output.split(separator: ".").count == 3)
    }
}
