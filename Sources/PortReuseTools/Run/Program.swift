import PortReuse
import PortReuseSystem

/// A program to start with the shim preloaded: found through PATH as a shell finds it, and checked for
/// what would keep the dynamic loader from loading the shim into it.
package struct Program {
    /// The command as the user wrote it (the program's `argv[0]`).
    package let name: String
    /// The file that runs.
    package let path: String

    /// Finds `name` as `execvp` and shells do: a name with a `/` is a path, anything else is looked up in
    /// each folder of `searchPath` (an empty entry is the current folder). Not found exits 127, found but
    /// not executable 126, as in shells.
    package static func find(_ name: String, searchPath: String?) throws(CommandFailure) -> Program {
        if name.contains("/") {
            guard Files.status(of: name, following: true) != nil else { throw CommandFailure("\(name): no such file", exitCode: 127) }
            guard Files.isRegularFile(name), Files.isExecutable(name) else {
                throw CommandFailure("\(name) is not an executable file (check its mode: chmod +x \(name))", exitCode: 126)
            }
            return Program(name: name, path: name)
        }
        guard !name.isEmpty else { throw CommandFailure("the command is empty", exitCode: 127) }
        let folders = (searchPath ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":", omittingEmptySubsequences: false)
        var notExecutable: String?
        for folder in folders {
            let candidate = (folder.isEmpty ? "." : String(folder)) + "/" + name
            guard Files.isRegularFile(candidate) else { continue }
            if Files.isExecutable(candidate) { return Program(name: name, path: candidate) }
            notExecutable = notExecutable ?? candidate
        }
        if let notExecutable {
            throw CommandFailure("\(notExecutable) is not executable (check its mode: chmod +x \(notExecutable))", exitCode: 126)
        }
        throw CommandFailure("command not found: \(name) (looked in PATH=\(searchPath ?? "(unset)"))", exitCode: 127)
    }

    /// Throws, with the reason and what to use instead, when the shim could not reach this program: a
    /// statically linked executable (no dynamic loader runs), or one the kernel starts in secure mode
    /// (set-user-ID, set-group-ID, file capabilities), where the loader ignores LD_PRELOAD. Follows `#!`
    /// lines to their interpreter, and `#!/usr/bin/env NAME` to NAME.
    package func checkShimReaches(searchPath: String?) throws(CommandFailure) {
        if let via = try inspect(searchPath: searchPath).staticExecutable {
            throw CommandFailure(
                "\(via) is statically linked (its ELF header names no interpreter, such as Go binaries and static "
                    + "musl builds), so no dynamic loader runs and LD_PRELOAD cannot load the shim into it. " + Self.instead,
                exitCode: 126)
        }
    }

    /// What runs when this program starts, for choosing how to reach its socket calls.
    package struct Inspection: Sendable, Equatable {
        /// The first statically linked executable on the way (the program, a `#!` interpreter, env's target),
        /// as a message names it, or `nil`.
        package var staticExecutable: String?
        /// The first Go executable on the way and what shows it is Go, or `nil`.
        package var goExecutable: (path: String, mark: String)?
        /// The first executable on the way built for another ABI than portreuse's (32-bit, x32, another machine),
        /// as a message names it, or `nil`: neither the shim nor the kernel path reaches its socket calls.
        package var foreignExecutable: String?

        package static func == (a: Inspection, b: Inspection) -> Bool {
            a.staticExecutable == b.staticExecutable && a.goExecutable?.path == b.goExecutable?.path && a.goExecutable?.mark == b.goExecutable?.mark
                && a.foreignExecutable == b.foreignExecutable
        }
    }

    /// Refuses (exit 64) `portreuse run … -- portreuse up …`: up shares its port itself, and under run's filter
    /// run would answer the binds of up and of its programs: a program binding the address by itself would get
    /// a socket of its own beside up's (made shareable by run), where up's steering does not reach, unserved.
    package func checkNotUp(arguments: [String]) throws(CommandFailure) {
        guard arguments.count > 1, arguments[1] == "up" || arguments[1] == "serve", let own = try? Processes.currentExecutable(),
            let mine = Files.status(of: own, following: true), let theirs = Files.status(of: path, following: true), mine.device == theirs.device, mine.inode == theirs.inode
        else { return }
        throw CommandFailure(
            "portreuse run would wrap portreuse up: up shares its port itself (each generation gets a socket up steers, or up's own socket "
                + "through its own bind filter), and under run the binds of up and of its programs would be answered by run instead. "
                + "Run `portreuse up …` directly.", exitCode: 64)
    }

    /// Refuses (exit 126) a program built for another ABI than portreuse's: a 64-bit shim is not loaded into a
    /// 32-bit program (the loader skips it with "wrong ELF class"), and the kernel path's filter sees the calls
    /// of portreuse's own architecture only, so `--policy`, `--bind` and `--source` would silently not apply.
    package func checkABI(searchPath: String?) throws(CommandFailure) {
        guard let foreign = try inspect(searchPath: searchPath).foreignExecutable else { return }
        throw CommandFailure(
            "\(foreign): portreuse run reaches neither its socket calls through the LD_PRELOAD shim (built for \(ExecutableFormat.ownABI)) "
                + "nor through the kernel (the seccomp filter sees \(ExecutableFormat.ownABI) system calls only), so the options would not apply. "
                + "Use `portreuse up`, which opens the port itself and hands it to the program by socket activation (LISTEN_FDS), or a build of the program for \(ExecutableFormat.ownABI).",
            exitCode: 126)
    }

    /// Follows `#!` lines to their interpreter, and `#!/usr/bin/env NAME` to NAME, and says what it found. Throws
    /// for what can run neither way: set-user-ID, set-group-ID or file-capability programs (LD_PRELOAD is ignored
    /// and PR_SET_NO_NEW_PRIVS would drop the privilege), files that are not executables, missing interpreters.
    package func inspect(searchPath: String?) throws(CommandFailure) -> Inspection {
        var found = Inspection()
        try Self.check(path, for: name, searchPath: searchPath, depth: 0, into: &found)
        return found
    }

    private static let instead =
        "Use `portreuse run --intercept kernel`, which reaches any program through seccomp, or `portreuse up`, which "
        + "opens the port itself and hands it to the program by socket activation (LISTEN_FDS), or make the program "
        + "set SO_REUSEPORT itself."

    private static func check(_ path: String, for command: String, searchPath: String?, depth: Int, into found: inout Inspection) throws(CommandFailure) {
        let via = path == command ? path : "\(path) (run for \(command))"
        if let reason = secureExecution(path) {
            throw CommandFailure(
                "\(via) \(reason), so the kernel starts it in secure mode: the dynamic loader ignores LD_PRELOAD, and "
                    + "seccomp interception (PR_SET_NO_NEW_PRIVS) would drop its privilege: portreuse run cannot reach it. "
                    + "Run it as the user it switches to, or a copy without that bit. "
                    + "Use `portreuse up` instead, which opens the port itself and hands it to the program by socket "
                    + "activation (LISTEN_FDS), or make the program set SO_REUSEPORT itself.",
                exitCode: 126)
        }
        let format = ExecutableFormat(path)
        switch format {
        case .unreadable:
            return  // an unreadable (execute-only) file cannot be checked: let it run
        case .dynamicELF, .staticELF:
            if case .staticELF = format, found.staticExecutable == nil { found.staticExecutable = via }
            if found.foreignExecutable == nil, let abi = ExecutableFormat.foreignABI(path) { found.foreignExecutable = "\(via) is \(abi)" }
            if found.goExecutable == nil, let mark = ExecutableFormat.goMark(path) { found.goExecutable = (path, mark) }
        case .other:
            throw CommandFailure("\(via) is neither an ELF executable nor a script with a #! line", exitCode: 126)
        case .script(let interpreter, let argument):
            guard depth < 4 else { throw CommandFailure("\(via): too many levels of #! interpreters", exitCode: 126) }
            guard Files.isRegularFile(interpreter) else {
                throw CommandFailure("\(via) starts with #!\(interpreter), which does not exist", exitCode: 126)
            }
            try check(interpreter, for: command, searchPath: searchPath, depth: depth + 1, into: &found)
            // #!/usr/bin/env NAME: env finds NAME through PATH and execs it, with LD_PRELOAD still set.
            if interpreter.split(separator: "/").last == "env",
                let target = argument?.split(whereSeparator: { $0 == " " || $0 == "\t" })
                    .first(where: { !$0.hasPrefix("-") && !$0.contains("=") }),
                let program = try? Program.find(String(target), searchPath: searchPath)
            {
                try check(program.path, for: command, searchPath: searchPath, depth: depth + 1, into: &found)
            }
        }
    }

    /// Why the kernel would start this file in secure mode (AT_SECURE) for us, or `nil`: set-user-ID to
    /// another user, set-group-ID to another group, or file capabilities for a user other than root; not
    /// on a file system mounted nosuid, where the bits do nothing.
    private static func secureExecution(_ path: String) -> String? {
        guard let info = Files.status(of: path, following: true), !Files.isOnNoSUIDMount(path) else { return nil }
        if info.permissions & 0o4000 != 0 && info.owner != Processes.realUserID {  // S_ISUID
            return "is set-user-ID to \(userName(info.owner))"
        }
        if info.permissions & 0o2000 != 0 && info.group != Processes.realGroupID {  // S_ISGID
            return "is set-group-ID to \(groupName(info.group))"
        }
        if Processes.realUserID != 0 && Processes.hasFileCapabilities(path) {
            return "has file capabilities (getcap \(path))"
        }
        return nil
    }

    private static func userName(_ uid: UInt32) -> String { Processes.userName(uid).map { "\($0) (uid \(uid))" } ?? "uid \(uid)" }

    private static func groupName(_ gid: UInt32) -> String { Processes.groupName(gid).map { "\($0) (gid \(gid))" } ?? "gid \(gid)" }
}

/// What kind of executable a file is, read from its first bytes and, for ELF, its program headers.
package enum ExecutableFormat: Equatable {
    /// ELF with a PT_INTERP program header: the dynamic loader runs and honours LD_PRELOAD.
    case dynamicELF(interpreter: String)
    /// ELF without PT_INTERP (static, or static-pie): no loader, no LD_PRELOAD.
    case staticELF
    /// A script: `#!INTERPRETER [ARGUMENT]`.
    case script(interpreter: String, argument: String?)
    /// Anything else.
    case other
    /// The file cannot be read.
    case unreadable

    package init(_ path: String) {
        guard let head = Files.read(path, limit: 256) else { self = .unreadable; return }
        if head.starts(with: [0x7F, 0x45, 0x4C, 0x46]) {
            self = Self.elf(path, head) ?? .other
        } else if head.starts(with: [0x23, 0x21]) {  // #!
            self = Self.script(head) ?? .other
        } else {
            self = .other
        }
    }

    /// The kernel's reading of a #! line: the interpreter up to the first blank, then one optional argument.
    private static func script(_ head: [UInt8]) -> ExecutableFormat? {
        let line = String(decoding: head.dropFirst(2).prefix { $0 != 10 }, as: UTF8.self)
        let trimmed = line.drop { $0 == " " || $0 == "\t" }
        let interpreter = trimmed.prefix { $0 != " " && $0 != "\t" }
        guard !interpreter.isEmpty else { return nil }
        let argument = trimmed.dropFirst(interpreter.count).trimmingBlanks()
        return .script(interpreter: String(interpreter), argument: argument.isEmpty ? nil : String(argument))
    }

    /// Looks for PT_INTERP among the program headers (ELF32 or ELF64, either byte order).
    private static func elf(_ path: String, _ head: [UInt8]) -> ExecutableFormat? {
        guard head.count >= 64, head[4] == 1 || head[4] == 2, head[5] == 1 || head[5] == 2 else { return nil }
        let wide = head[4] == 2
        let little = head[5] == 1
        func number(_ bytes: ArraySlice<UInt8>) -> Int {
            let ordered = little ? Array(bytes.reversed()) : Array(bytes)
            return ordered.reduce(0) { $0 << 8 | Int($1) }
        }
        let headerTable = wide ? number(head[32..<40]) : number(head[28..<32])
        let entrySize = wide ? number(head[54..<56]) : number(head[42..<44])
        let entries = wide ? number(head[56..<58]) : number(head[44..<46])
        guard entrySize >= (wide ? 56 : 32), entries <= 4096,
            let table = Files.read(path, offset: headerTable, count: entrySize * entries, exactly: true)
        else { return nil }
        for index in 0..<entries {
            let entry = table[(index * entrySize)..<((index + 1) * entrySize)]
            let start = entry.startIndex
            guard number(entry[start..<start + 4]) == 3 else { continue }  // PT_INTERP
            let offset = wide ? number(entry[start + 8..<start + 16]) : number(entry[start + 4..<start + 8])
            let size = wide ? number(entry[start + 32..<start + 40]) : number(entry[start + 16..<start + 20])
            let name = Files.read(path, offset: offset, count: max(0, min(size, 4096)), exactly: true) ?? []
            return .dynamicELF(interpreter: String(decoding: name.prefix { $0 != 0 }, as: UTF8.self))
        }
        return .staticELF
    }
}

extension ExecutableFormat {
    /// The ABI portreuse itself is built for, as messages name it.
    package static var ownABI: String {
        #if arch(x86_64)
        "x86-64"
        #elseif arch(arm64)
        "arm64"
        #else
        "this machine's 64-bit ABI"
        #endif
    }

    /// What an ELF file is built for when that is not portreuse's own ABI ("a 32-bit program (ELFCLASS32, i386)"),
    /// from its class and machine (e_ident[EI_CLASS], e_machine); `nil` for one of ours, or a file it cannot read.
    package static func foreignABI(_ path: String) -> String? {
        guard let head = Files.read(path, limit: 20), head.count >= 20, head.starts(with: [0x7F, 0x45, 0x4C, 0x46]) else { return nil }
        let little = head[5] == 1
        let machine = little ? Int(head[18]) | Int(head[19]) << 8 : Int(head[18]) << 8 | Int(head[19])
        let names = [3: "i386", 40: "ARM", 62: "x86-64", 183: "AArch64", 8: "MIPS", 20: "PowerPC", 21: "PowerPC64", 243: "RISC-V"]
        let name = names[machine] ?? "machine \(machine)"
        #if arch(x86_64)
        let own = 62
        #elseif arch(arm64)
        let own = 183
        #else
        return nil
        #endif
        if head[4] == 1 { return machine == own ? "an x32 program (ELFCLASS32, \(name))" : "a 32-bit program (ELFCLASS32, \(name))" }
        return machine == own ? nil : "a program for another machine (\(name))"
    }

    /// What shows that an ELF file was built by the Go toolchain (which makes its system calls itself, cgo or
    /// not, so LD_PRELOAD cannot reach its sockets): a `.go.buildinfo` or `.note.go.buildid` section, or a
    /// PT_NOTE segment holding the Go build ID note (name "Go", type 4), for a file without section headers.
    /// `nil` for anything else. Every size read from the file is bounded.
    package static func goMark(_ path: String) -> String? {
        guard let head = Files.read(path, limit: 64), head.count >= 64, head.starts(with: [0x7F, 0x45, 0x4C, 0x46]),
            head[4] == 1 || head[4] == 2, head[5] == 1 || head[5] == 2
        else { return nil }
        let wide = head[4] == 2
        let little = head[5] == 1
        func number(_ bytes: ArraySlice<UInt8>) -> Int {
            let ordered = little ? Array(bytes.reversed()) : Array(bytes)
            return ordered.reduce(0) { ($0 << 8) | Int($1) }
        }
        // Section headers, and the section-name string table.
        let sectionTable = wide ? number(head[40..<48]) : number(head[32..<36])
        let sectionSize = wide ? number(head[58..<60]) : number(head[46..<48])
        let sections = wide ? number(head[60..<62]) : number(head[48..<50])
        let namesIndex = wide ? number(head[62..<64]) : number(head[50..<52])
        if sectionTable > 0, sectionSize >= (wide ? 64 : 40), sectionSize <= 256, sections > 0, sections <= 4096, namesIndex < sections,
            let table = Files.read(path, offset: sectionTable, count: sectionSize * sections, exactly: true)
        {
            func field(_ index: Int, _ wideRange: Range<Int>, _ narrowRange: Range<Int>) -> Int {
                let start = index * sectionSize
                let range = wide ? wideRange : narrowRange
                return number(table[(start + range.lowerBound)..<(start + range.upperBound)])
            }
            let namesOffset = field(namesIndex, 24..<32, 16..<20)
            let namesSize = max(0, min(field(namesIndex, 32..<40, 20..<24), 1 << 20))
            if let names = Files.read(path, offset: namesOffset, count: namesSize, exactly: true) {
                for index in 0..<sections {
                    let offset = field(index, 0..<4, 0..<4)
                    guard offset < names.count else { continue }
                    let name = String(decoding: names[offset...].prefix { $0 != 0 }.prefix(64), as: UTF8.self)
                    if name == ".go.buildinfo" || name == ".note.go.buildid" { return "its \(name) section" }
                }
            }
        }
        // PT_NOTE segments: the Go build ID note.
        let headerTable = wide ? number(head[32..<40]) : number(head[28..<32])
        let entrySize = wide ? number(head[54..<56]) : number(head[42..<44])
        let entries = wide ? number(head[56..<58]) : number(head[44..<46])
        guard entrySize >= (wide ? 56 : 32), entrySize <= 256, entries <= 4096,
            let table = Files.read(path, offset: headerTable, count: entrySize * entries, exactly: true)
        else { return nil }
        for index in 0..<entries {
            let start = index * entrySize
            guard number(table[start..<start + 4]) == 4 else { continue }  // PT_NOTE
            let offset = wide ? number(table[start + 8..<start + 16]) : number(table[start + 4..<start + 8])
            let size = max(0, min(wide ? number(table[start + 32..<start + 40]) : number(table[start + 16..<start + 20]), 1 << 16))
            guard let notes = Files.read(path, offset: offset, count: size, exactly: true) else { continue }
            var cursor = 0
            while cursor + 12 <= notes.count {
                let nameSize = number(notes[cursor..<cursor + 4]), descriptionSize = number(notes[cursor + 4..<cursor + 8])
                let type = number(notes[cursor + 8..<cursor + 12])
                let nameStart = cursor + 12
                guard nameSize <= notes.count, descriptionSize <= notes.count, nameStart + nameSize <= notes.count else { break }
                if type == 4, notes[nameStart..<nameStart + nameSize].prefix(while: { $0 != 0 }).elementsEqual("Go".utf8) {
                    return "its Go build ID note"
                }
                cursor = nameStart + (nameSize + 3) / 4 * 4 + (descriptionSize + 3) / 4 * 4
            }
        }
        return nil
    }
}

extension Substring {
    /// Without leading and trailing spaces, tabs and carriage returns.
    package func trimmingBlanks() -> Substring {
        let blank: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
        guard let first = firstIndex(where: { !blank($0) }), let last = lastIndex(where: { !blank($0) }) else { return "" }
        return self[first...last]
    }
}
