#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CPortReuseSystem
import SystemPackage

#if canImport(Glibc) || canImport(Darwin)
/// Files, folders, pipes and descriptors: the few calls PortReuse, the CLI and the tests make, each with one
/// EINTR and errno path.
package enum Files {
    /// The text of an errno value, such as `No such file or directory`. The corresponding C function is `strerror`.
    package static func errorText(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }

    /// The whole content of a file (a /proc file too), at most `limit` bytes; `nil` when it cannot be read.
    package static func read(_ path: String, limit: Int = 1 << 26) -> [UInt8]? {
        guard let fd = try? systemCall("open", { open(path, O_RDONLY | O_CLOEXEC) }) else { return nil }
        defer { close(fd) }
        return read(descriptor: fd, limit: limit)
    }

    /// Reads `count` bytes at `offset` (fewer when the file ends first, unless `exactly`); `nil` when the file
    /// cannot be read, or is short and `exactly` is set. The corresponding C function is `pread`.
    package static func read(_ path: String, offset: Int, count: Int, exactly: Bool = false) -> [UInt8]? {
        guard let fd = try? systemCall("open", { open(path, O_RDONLY | O_CLOEXEC) }) else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: count)
        guard let read = try? systemCall("pread", { bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) } }),
            !exactly || read == count
        else { return nil }
        return Array(bytes[0..<read])
    }

    /// Reads from `descriptor` until end of file or `limit` bytes; `nil` on an error before any byte.
    package static func read(descriptor: Int32, limit: Int) -> [UInt8]? {
        var content: [UInt8] = []
        // No bigger than the limit: most reads are of small /proc files, many times a second in `up`.
        var chunk = [UInt8](repeating: 0, count: min(65_536, max(limit, 1)))
        while content.count < limit {
            let wanted = min(chunk.count, limit - content.count)
            let read = { chunk.withUnsafeMutableBytes { systemRead(descriptor, $0.baseAddress, wanted) } }
            guard let count = try? systemCall("read", unacceptable: Self.unacceptable(descriptor), read) else {
                return content.isEmpty ? nil : content
            }
            if count == 0 { break }
            content.append(contentsOf: chunk[0..<count])
        }
        return content
    }

    /// What a call on `descriptor` may not get: a standard stream (0, 1, 2) may have been closed by whoever started
    /// this process, which is no bug of its own.
    static func unacceptable(_ descriptor: Int32) -> Set<Errno> { descriptor <= 2 ? [.badAddress] : programmerErrors }

    /// Writes all of `bytes` to `descriptor`. The corresponding C function is `write`.
    package static func write(_ bytes: some Collection<UInt8>, to descriptor: Int32) throws(SystemError) {
        var rest = Array(bytes)[...]
        while !rest.isEmpty {
            let written = try systemCall("write", unacceptable: Self.unacceptable(descriptor)) {
                rest.withUnsafeBytes { systemWrite(descriptor, $0.baseAddress, $0.count) }
            }
            rest = rest.dropFirst(written)
        }
    }

    #if os(Linux)  // Darwin has no sigtimedwait
    /// Writes to a pipe whose reader may be gone: EPIPE, never a SIGPIPE that kills this process. SIGPIPE is
    /// blocked on this thread for the write and a pending one taken, so the process's own disposition stays.
    package static func writeWithoutSIGPIPE(_ bytes: [UInt8], to descriptor: Int32) {
        var pipeSignal = sigset_t(), previous = sigset_t()
        sigemptyset(&pipeSignal)
        sigaddset(&pipeSignal, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &pipeSignal, &previous)
        try? Files.write(bytes, to: descriptor)
        var pending = sigset_t()
        sigpending(&pending)
        if sigismember(&pending, SIGPIPE) == 1 && sigismember(&previous, SIGPIPE) == 0 {
            var none = timespec()
            _ = sigtimedwait(&pipeSignal, nil, &none)
        }
        pthread_sigmask(SIG_SETMASK, &previous, nil)
    }
    #endif

    /// `stat` of a path (following symlinks), or `nil`.
    package static func status(_ path: String) -> stat? {
        var info = stat()
        return stat(path, &info) == 0 ? info : nil
    }

    /// The modification time in seconds since 1970, or `nil` when the file is missing.
    package static func modificationTime(_ path: String) -> Double? {
        #if canImport(Darwin)
        status(path).map { Double($0.st_mtimespec.tv_sec) + Double($0.st_mtimespec.tv_nsec) / 1e9 }
        #else
        status(path).map { Double($0.st_mtim.tv_sec) + Double($0.st_mtim.tv_nsec) / 1e9 }
        #endif
    }

    /// Why a folder is no place for a file that others must not replace or redirect, or `nil` when it is one:
    /// it must belong to this user or to root and be writable by nobody else, unless it is sticky (as /tmp is:
    /// there nobody may rename or delete another user's file).
    package static func unsafeFolderReason(_ folder: String) -> String? {
        guard let info = status(folder) else { return "it does not exist" }
        let sticky = info.st_mode & S_ISVTX != 0
        if sticky { return nil }
        let owner = info.st_uid
        if owner != geteuid() && owner != 0 { return "it belongs to uid \(owner), who could replace the file" }
        if info.st_mode & (S_IWGRP | S_IWOTH) != 0 { return "other users may write into it and it is not sticky" }
        return nil
    }

    /// Replaces `path` with `bytes`, whole or not at all, and never through a symbolic link: the bytes go to a
    /// new file with a random name in the same folder (O_CREAT|O_EXCL|O_NOFOLLOW, `mode`), which is then renamed
    /// over `path` (rename replaces a link itself, never what it points to). Refuses a folder that
    /// ``unsafeFolderReason(_:)`` does not accept. The corresponding C functions are `open`, `write`, `rename`.
    package static func replace(_ path: String, with bytes: [UInt8], mode: mode_t = 0o644) throws(SystemError) {
        let folder = parent(of: path)
        if let reason = unsafeFolderReason(folder) { throw SystemError("refusing to write in \(folder): \(reason)", .permissionDenied) }
        var temporary = ""
        var descriptor: Int32 = -1
        for _ in 0..<8 {
            temporary = path + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            do {
                descriptor = try systemCall("open \(temporary)") { open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode) }
                break
            } catch where error.errno == .fileExists {
                continue
            }
        }
        guard descriptor >= 0 else { throw SystemError("open \(path).tmp-…", .fileExists) }
        defer { close(descriptor) }
        do {
            try write(bytes, to: descriptor)
            _ = try systemCall("rename \(temporary) \(path)") { rename(temporary, path) }
        } catch {
            unlink(temporary)
            throw error
        }
    }

    package static func isRegularFile(_ path: String) -> Bool {
        guard let info = status(path) else { return false }
        return info.st_mode & S_IFMT == S_IFREG
    }

    /// The names in a folder (without `.` and `..`); empty when it cannot be read.
    package static func list(_ folder: String) -> [String] {
        guard let directory = opendir(folder) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// The folder that holds `path` (`/` for `/x`; `.` for a bare name).
    package static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// A pipe with both ends close-on-exec (and non-blocking if asked), set atomically where the system can.
    /// The corresponding C function is `pipe2`.
    package static func pipe(nonBlocking: Bool = false) throws(SystemError) -> (read: Int32, write: Int32) {
        var ends: [Int32] = [-1, -1]
        #if os(Linux)
        _ = try systemCall("pipe2") { ends.withUnsafeMutableBufferPointer { csystem_pipe2($0.baseAddress!, O_CLOEXEC | (nonBlocking ? O_NONBLOCK : 0)) } }
        #else
        _ = try systemCall("pipe") { Darwin.pipe(&ends) }
        for end in ends {
            setCloseOnExec(end)
            if nonBlocking { setNonBlocking(end, true) }
        }
        #endif
        return (ends[0], ends[1])
    }

    /// Closes a descriptor, once; EINTR is not retried (the descriptor is gone either way on Linux). A descriptor
    /// that is not open (closed twice) is a bug: it stops the process (``programmerErrors``).
    package static func close(_ descriptor: Int32) {
        if systemClose(descriptor) != 0 { preconditionAcceptable(Errno(rawValue: errno), from: "close(\(descriptor))") }
    }

    /// Whether a descriptor is in non-blocking mode (O_NONBLOCK), or `nil` if it is not open.
    package static func isNonBlocking(_ descriptor: Int32) -> Bool? {
        let flags = fcntl(descriptor, F_GETFL)
        return flags < 0 ? nil : flags & O_NONBLOCK != 0
    }

    /// Sets or clears O_NONBLOCK, leaving the other status flags as they are; false if the descriptor is not open.
    @discardableResult
    package static func setNonBlocking(_ descriptor: Int32, _ on: Bool) -> Bool {
        let flags = fcntl(descriptor, F_GETFL)
        guard flags >= 0 else { return false }
        let wanted = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
        return wanted == flags || fcntl(descriptor, F_SETFL, wanted) == 0
    }

    /// Marks a descriptor close-on-exec (FD_CLOEXEC), or clears the mark; false if the descriptor is not open.
    @discardableResult
    package static func setCloseOnExec(_ descriptor: Int32, _ on: Bool = true) -> Bool {
        let flags = fcntl(descriptor, F_GETFD)
        guard flags >= 0 else { return false }
        return fcntl(descriptor, F_SETFD, on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC) == 0
    }

    /// Calls `body` with a NULL-terminated array of C strings (for `execve` and the spawn).
    package static func withCStrings<R>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> R) -> R {
        let pointers = strings.map { strdup($0) } + [nil]
        defer { pointers.forEach { free($0) } }
        return body(pointers)
    }
}

// The C functions under names that Files' own `read`, `write` and `close` do not shadow.
@inline(__always) private func systemClose(_ fd: Int32) -> Int32 { close(fd) }
@inline(__always) private func systemRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int { read(fd, buffer, count) }
@inline(__always) private func systemWrite(_ fd: Int32, _ buffer: UnsafeRawPointer?, _ count: Int) -> Int { write(fd, buffer, count) }
#endif
