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
        guard let fd = (try? systemCall("open", { systemOpen(path, O_RDONLY | O_CLOEXEC, 0) })).map(Descriptor.init(_:)) else { return nil }
        defer { close(fd) }
        return read(descriptor: fd, limit: limit)
    }

    /// Reads `count` bytes at `offset` (fewer when the file ends first, unless `exactly`); `nil` when the file
    /// cannot be read, or is short and `exactly` is set. The corresponding C function is `pread`.
    package static func read(_ path: String, offset: Int, count: Int, exactly: Bool = false) -> [UInt8]? {
        guard let fd = (try? systemCall("open", { systemOpen(path, O_RDONLY | O_CLOEXEC, 0) })).map(Descriptor.init(_:)) else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: count)
        guard let read = try? systemCall("pread", { bytes.withUnsafeMutableBytes { pread(fd.rawValue, $0.baseAddress, count, off_t(offset)) } }),
            !exactly || read == count
        else { return nil }
        return Array(bytes[0..<read])
    }

    /// Reads from `descriptor` until end of file or `limit` bytes; `nil` on an error before any byte.
    package static func read(descriptor: Descriptor, limit: Int) -> [UInt8]? {
        var content: [UInt8] = []
        // No bigger than the limit: most reads are of small /proc files, many times a second in `up`.
        var chunk = [UInt8](repeating: 0, count: min(65_536, max(limit, 1)))
        while content.count < limit {
            let wanted = min(chunk.count, limit - content.count)
            let read = { chunk.withUnsafeMutableBytes { systemRead(descriptor.rawValue, $0.baseAddress, wanted) } }
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
    static func unacceptable(_ descriptor: Descriptor) -> Set<Errno> { descriptor.isStandardStream ? [.badAddress] : programmerErrors }

    /// Writes all of `bytes` to `descriptor`. The corresponding C function is `write`.
    package static func write(_ bytes: some Collection<UInt8>, to descriptor: Descriptor) throws(SystemError) {
        var rest = Array(bytes)[...]
        while !rest.isEmpty {
            let written = try systemCall("write", unacceptable: Self.unacceptable(descriptor)) {
                rest.withUnsafeBytes { systemWrite(descriptor.rawValue, $0.baseAddress, $0.count) }
            }
            rest = rest.dropFirst(written)
        }
    }

    #if os(Linux)  // Darwin has no sigtimedwait
    /// Writes to a pipe whose reader may be gone: EPIPE, never a SIGPIPE that kills this process. SIGPIPE is
    /// blocked on this thread for the write and a pending one taken, so the process's own disposition stays.
    package static func writeWithoutSIGPIPE(_ bytes: [UInt8], to descriptor: Descriptor) {
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

    /// What a file is, and whose: the parts of `stat` the tools read.
    package struct Status: Sendable, Equatable {
        package enum Kind: Sendable, Equatable { case regular, directory, symbolicLink, socket, other }
        package var kind: Kind
        /// The permission bits, set-user-ID, set-group-ID and sticky included (`st_mode & 07777`).
        package var permissions: UInt32
        package var owner: UInt32
        package var group: UInt32
        /// The device and inode: together, the file's identity.
        package var device: UInt64
        package var inode: UInt64
        package var size: Int64

        init(_ info: stat) {
            switch info.st_mode & S_IFMT {
            case S_IFREG: kind = .regular
            case S_IFDIR: kind = .directory
            case S_IFLNK: kind = .symbolicLink
            case S_IFSOCK: kind = .socket
            default: kind = .other
            }
            permissions = UInt32(info.st_mode & 0o7777)
            owner = info.st_uid
            group = info.st_gid
            device = UInt64(info.st_dev)
            inode = UInt64(info.st_ino)
            size = Int64(info.st_size)
        }
    }

    /// What is at `path` (a symbolic link itself unless `following`), or `nil`. The corresponding C functions are
    /// `stat` and `lstat`.
    package static func status(of path: String, following: Bool) -> Status? {
        var info = stat()
        return (following ? stat(path, &info) : lstat(path, &info)) == 0 ? Status(info) : nil
    }

    /// What `descriptor` names, or `nil` when it is not open. The corresponding C function is `fstat`.
    package static func status(of descriptor: Descriptor) -> Status? {
        var info = stat()
        return fstat(descriptor.rawValue, &info) == 0 ? Status(info) : nil
    }

    /// Removes the file (or link) at `path`; whether it did. The corresponding C function is `unlink`.
    @discardableResult
    package static func remove(_ path: String) -> Bool { unlink(path) == 0 }

    /// Removes the folder at `path` if it is empty; whether it did. The corresponding C function is `rmdir`.
    @discardableResult
    package static func removeFolder(_ path: String) -> Bool { rmdir(path) == 0 }

    /// A new folder `prefix` + six random characters in `folder`, mode 0700. The corresponding C function is `mkdtemp`.
    package static func makeTemporaryFolder(in folder: String, prefix: String) throws(SystemError) -> String {
        var template = Array("\(folder)/\(prefix)XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw SystemError("mkdtemp \(folder)", Errno(rawValue: errno)) }
        return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// How ``open(_:_:permissions:)`` opens a file.
    package enum OpenMode: Sendable {
        /// For reading, never through a symbolic link.
        case readingWithoutFollowing
        /// A new file for writing, never an existing one nor through a symbolic link (O_CREAT|O_EXCL|O_NOFOLLOW).
        case creatingNew
        /// For appending, created if missing.
        case appending
    }

    /// Opens `path`; close-on-exec unless `inherited` (a descriptor an exec keeps, as an `flock` that must outlive
    /// it). The corresponding C function is `open`.
    package static func open(_ path: String, _ mode: OpenMode, permissions: UInt32 = 0o600, inherited: Bool = false) throws(SystemError) -> Descriptor {
        let flags = switch mode {
        case .readingWithoutFollowing: O_RDONLY | O_NOFOLLOW
        case .creatingNew: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW
        case .appending: O_WRONLY | O_CREAT | O_APPEND
        }
        return Descriptor(try systemCall("open \(path)") { systemOpen(path, flags | (inherited ? 0 : O_CLOEXEC), mode_t(permissions)) })
    }

    /// Takes an exclusive `flock` on `descriptor`; with `waiting` false, only if nobody holds one (whether it got
    /// it). The corresponding C function is `flock`.
    @discardableResult
    package static func lock(_ descriptor: Descriptor, waiting: Bool) -> Bool { flock(descriptor.rawValue, LOCK_EX | (waiting ? 0 : LOCK_NB)) == 0 }

    /// A close-on-exec duplicate of `descriptor` at `floor` or above. The corresponding C function is
    /// `fcntl(F_DUPFD_CLOEXEC)`.
    package static func duplicate(_ descriptor: Descriptor, atLeast floor: Descriptor) throws(SystemError) -> Descriptor {
        Descriptor(try systemCall("fcntl(F_DUPFD_CLOEXEC)") { fcntl(descriptor.rawValue, F_DUPFD_CLOEXEC, floor.rawValue) })
    }

    /// Puts `descriptor` under the number `target` too (closing what was there). The corresponding C function is `dup2`.
    package static func duplicate(_ descriptor: Descriptor, onto target: Descriptor) throws(SystemError) {
        _ = try systemCall("dup2") { dup2(descriptor.rawValue, target.rawValue) }
    }

    /// Whether this process may run the file at `path`. The corresponding C function is `access(X_OK)`.
    package static func isExecutable(_ path: String) -> Bool { access(path, X_OK) == 0 }

    /// Whether this process may read the file at `path`. The corresponding C function is `access(R_OK)`.
    package static func isReadable(_ path: String) -> Bool { access(path, R_OK) == 0 }

    /// Sets the permission bits of `path` (following a link). The corresponding C function is `chmod`.
    package static func setPermissions(_ path: String, _ permissions: UInt32) throws(SystemError) {
        _ = try systemCall("chmod \(path)") { chmod(path, mode_t(permissions)) }
    }

    /// Whether `descriptor` is a terminal. The corresponding C function is `isatty`.
    package static func isTerminal(_ descriptor: Descriptor) -> Bool { isatty(descriptor.rawValue) == 1 }

    /// Whether the file system holding `path` is mounted nosuid (set-user-ID bits do nothing there). The
    /// corresponding C function is `statvfs`.
    package static func isOnNoSUIDMount(_ path: String) -> Bool {
        var info = statvfs()
        return statvfs(path, &info) == 0 && UInt(info.f_flag) & UInt(ST_NOSUID) != 0
    }

    /// Flushes what `print` buffered for stdout. The corresponding C function is `fflush`.
    package static func flushStandardOutput() { fflush(nil) }  // nil: every output stream, stdout among them

    /// `poll`'s POLLIN: the event a `struct pollfd` asks for to wait for input (as another process's array holds it).
    package static let pollInput = Int16(POLLIN)

    /// Which of `descriptors` are readable (or hung up), waiting at most `milliseconds` (-1: for ever) for one to
    /// be (a signal starts the wait again, from the whole timeout). The corresponding C function is `poll`.
    package static func readable(_ descriptors: [Descriptor], milliseconds: Int32) -> [Bool] {
        var entries = descriptors.map { pollfd(fd: $0.rawValue, events: Int16(POLLIN), revents: 0) }
        guard let ready = try? systemCall("poll", { poll(&entries, nfds_t(entries.count), milliseconds) }), ready > 0 else {
            return descriptors.map { _ in false }
        }
        return entries.map { $0.revents != 0 }
    }

    /// `stat` of a path (following symlinks), or `nil`.
    static func status(_ path: String) -> stat? {
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
        var descriptor: Descriptor?
        for _ in 0..<8 {
            temporary = path + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            do {
                descriptor = Descriptor(try systemCall("open \(temporary)") { systemOpen(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode) })
                break
            } catch where error.errno == .fileExists {
                continue
            }
        }
        guard let descriptor else { throw SystemError("open \(path).tmp-…", .fileExists) }
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
    package static func pipe(nonBlocking: Bool = false) throws(SystemError) -> (read: Descriptor, write: Descriptor) {
        var ends: [Int32] = [-1, -1]
        #if os(Linux)
        _ = try systemCall("pipe2") { ends.withUnsafeMutableBufferPointer { csystem_pipe2($0.baseAddress!, O_CLOEXEC | (nonBlocking ? O_NONBLOCK : 0)) } }
        #else
        _ = try systemCall("pipe") { Darwin.pipe(&ends) }
        for end in ends {
            setCloseOnExec(Descriptor(end))
            if nonBlocking { setNonBlocking(Descriptor(end), true) }
        }
        #endif
        return (Descriptor(ends[0]), Descriptor(ends[1]))
    }

    /// Closes a descriptor, once; EINTR is not retried (the descriptor is gone either way on Linux). A descriptor
    /// that is not open (closed twice) is a bug: it stops the process (``programmerErrors``).
    package static func close(_ descriptor: Descriptor) {
        if systemClose(descriptor.rawValue) != 0 { preconditionAcceptable(Errno(rawValue: errno), from: "close(\(descriptor))") }
    }

    /// Whether a descriptor is in non-blocking mode (O_NONBLOCK), or `nil` if it is not open.
    package static func isNonBlocking(_ descriptor: Descriptor) -> Bool? {
        let flags = fcntl(descriptor.rawValue, F_GETFL)
        return flags < 0 ? nil : flags & O_NONBLOCK != 0
    }

    /// Sets or clears O_NONBLOCK, leaving the other status flags as they are; false if the descriptor is not open.
    @discardableResult
    package static func setNonBlocking(_ descriptor: Descriptor, _ on: Bool) -> Bool {
        let flags = fcntl(descriptor.rawValue, F_GETFL)
        guard flags >= 0 else { return false }
        let wanted = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
        return wanted == flags || fcntl(descriptor.rawValue, F_SETFL, wanted) == 0
    }

    /// Marks a descriptor close-on-exec (FD_CLOEXEC), or clears the mark; false if the descriptor is not open.
    @discardableResult
    package static func setCloseOnExec(_ descriptor: Descriptor, _ on: Bool = true) -> Bool {
        let flags = fcntl(descriptor.rawValue, F_GETFD)
        guard flags >= 0 else { return false }
        return fcntl(descriptor.rawValue, F_SETFD, on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC) == 0
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
@inline(__always) private func systemOpen(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 { open(path, flags, mode) }
@inline(__always) private func systemRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int { read(fd, buffer, count) }
@inline(__always) private func systemWrite(_ fd: Int32, _ buffer: UnsafeRawPointer?, _ count: Int) -> Int { write(fd, buffer, count) }
#endif
