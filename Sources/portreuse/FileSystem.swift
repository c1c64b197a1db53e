import Glibc

/// The few file and process calls the CLI needs, straight over Glibc.
enum FileSystem {
    /// Writes one line to stderr.
    static func printError(_ line: String) {
        var bytes = Array((line + "\n").utf8)[...]
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
            if written > 0 { bytes = bytes.dropFirst(written) } else if written < 0 && errno == EINTR { continue } else { return }
        }
    }

    /// Whether a file has file capabilities (the `security.capability` extended attribute, as `getcap`
    /// shows). Glibc's module map leaves out sys/xattr.h, so `getxattr` is looked up once.
    static func hasFileCapabilities(_ path: String) -> Bool {
        guard let getxattr else { return false }
        return getxattr(path, "security.capability", nil, 0) > 0
    }

    private typealias GetXattr = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeMutableRawPointer?, Int) -> Int
    private static let getxattr: GetXattr? = dlsym(dlopen(nil, RTLD_NOW), "getxattr").map { unsafeBitCast($0, to: GetXattr.self) }

    /// The text of the current `errno`, such as `No such file or directory`.
    static func errorText(_ code: Int32 = errno) -> String {
        String(cString: strerror(code))
    }

    /// The real path of this executable. The corresponding C call is `readlink("/proc/self/exe")`.
    static func currentExecutable() throws(CommandFailure) -> String {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = buffer.withUnsafeMutableBufferPointer {
            $0.baseAddress!.withMemoryRebound(to: CChar.self, capacity: $0.count) { readlink("/proc/self/exe", $0, Int(PATH_MAX)) }
        }
        guard length > 0 else { throw CommandFailure("cannot find this executable through /proc/self/exe: \(errorText())") }
        return String(decoding: buffer[0..<length], as: UTF8.self)
    }

    /// The folder that holds `path` (`/` for `/x`; the path itself for `/`).
    static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// `stat` of a path (following symlinks), or `nil`.
    static func status(_ path: String) -> stat? {
        var info = stat()
        return stat(path, &info) == 0 ? info : nil
    }

    static func isRegularFile(_ path: String) -> Bool {
        guard let info = status(path) else { return false }
        return info.st_mode & S_IFMT == S_IFREG
    }

    /// The modification time in seconds since 1970, or `nil` when the file is missing.
    static func modificationTime(_ path: String) -> Double? {
        status(path).map { Double($0.st_mtim.tv_sec) + Double($0.st_mtim.tv_nsec) / 1e9 }
    }

    /// The names in a folder (without `.` and `..`); empty when it cannot be read.
    static func list(_ folder: String) -> [String] {
        guard let directory = opendir(folder) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Reads `count` bytes at `offset` (fewer when the file ends first, unless `exactly`); `nil` when the file
    /// cannot be read, or is short and `exactly` is set. The corresponding C function is `pread`.
    static func read(_ path: String, offset: Int = 0, count: Int, exactly: Bool = false) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: count)
        let read = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
        guard read >= 0, !exactly || read == count else { return nil }
        return Array(bytes[0..<read])
    }

    /// A pipe, both ends close-on-exec (Glibc's module map has no `pipe2`); `nil` on an error.
    static func pipe(nonBlocking: Bool) -> (read: Int32, write: Int32)? {
        var ends: [Int32] = [0, 0]
        guard Glibc.pipe(&ends) == 0 else { return nil }
        for end in ends {
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
            if nonBlocking { _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK) }
        }
        return (ends[0], ends[1])
    }

    /// Reads from `descriptor` until end of file or `limit` bytes; `nil` on an error.
    static func read(descriptor: Int32, limit: Int) -> [UInt8]? {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while bytes.count < limit {
            let count = Glibc.read(descriptor, &buffer, min(buffer.count, limit - bytes.count))
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { return nil }
            if count == 0 { break }
            bytes += buffer[0..<count]
        }
        return bytes
    }

    /// Writes `bytes` to a new or truncated file with mode 0644; false on any error.
    static func write(_ bytes: [UInt8], to path: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var rest = bytes[...]
        while !rest.isEmpty {
            let written = rest.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { return false }
            rest = rest.dropFirst(written)
        }
        return true
    }

    /// Calls `body` with a NULL-terminated array of C strings (for `execve` and `posix_spawn`).
    static func withCStrings<R>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> R) -> R {
        let pointers = strings.map { strdup($0) } + [nil]
        defer { pointers.forEach { free($0) } }
        return body(pointers)
    }

    /// Starts a program found through PATH, waits for it, and returns its exit status (128 + N after
    /// signal N, 127 when it could not start). With `stdoutToStderr`, its stdout goes to our stderr.
    static func spawnAndWait(_ arguments: [String], stdoutToStderr: Bool) -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if stdoutToStderr { posix_spawn_file_actions_adddup2(&actions, STDERR_FILENO, STDOUT_FILENO) }
        var pid = pid_t()
        let started = withCStrings(arguments) { argv in
            posix_spawnp(&pid, argv[0]!, &actions, nil, argv, environ)
        }
        guard started == 0 else { return 127 }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let signal = status & 0x7F
        return signal == 0 ? (status >> 8) & 0xFF : 128 + signal
    }
}
