#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SystemPackage

#if canImport(Glibc) || canImport(Darwin)

/// A listening Unix-domain stream socket at a path in the file system, or at an abstract name (`@name`, Linux).
/// It owns its descriptor.
///
/// The other "address already in use" lives here: a server that ended without removing its socket file leaves it
/// behind, and a plain `bind` fails until someone deletes it, while deleting a live one cuts a running server
/// off. `UnixListener` follows the rule ``UnixSocketFile`` states: a **stale** file (nothing accepts behind it) is
/// replaced, a **live** one is refused with who holds it, and a file that is not a socket is never touched.
///
/// On Linux the file is created with the permissions asked (or narrower, by the umask, then widened): it never
/// lets in more clients than asked, even for a moment.
///
/// ```swift
/// let listener = try UnixListener(path: "/run/app/app.sock", permissions: [.ownerReadWrite, .groupReadWrite])
/// let client = try listener.accept()        // a SocketHandle: hand its descriptor to your I/O
/// listener.removeFile()                     // at the end: the file goes, if it is still this listener's
/// ```
///
/// ``Listener`` and ``Connection`` are TCP's: their addresses are IP addresses and ports.
public final class UnixListener: SocketOwner {
    public let handle: SocketHandle
    /// The path, or `@name` for an abstract socket.
    public let path: String
    /// The inode of the socket file this listener created or adopted (nil for an abstract name): what
    /// ``removeFile()`` checks the path still names.
    private let fileInode: UInt64?

    /// Whether the name is abstract (`@name`): no file, gone with its last socket.
    public var isAbstract: Bool { path.hasPrefix("@") }

    /// Binds and listens at `path` (a stale socket file there is replaced).
    ///
    /// - Parameters:
    ///   - path: a file path (absolute or relative, at most 107 bytes), or `@name` for Linux's abstract namespace.
    ///   - backlog: the accept queue length; the system maximum (`SOMAXCONN`) by default.
    ///   - permissions: the socket file's permissions (a client needs write permission to connect); as the
    ///     process's umask makes them by default.
    ///   - owner: the file's owner and group (user and group ids; changing the owner needs privilege).
    /// - Throws: `EADDRINUSE` when something accepts on the path (the diagnosis names who), `EEXIST` when a
    ///   file that is not a socket is there, and the system's errors otherwise.
    public init(
        path: String, backlog: Int32? = nil, permissions: FilePermissions? = nil, owner: (user: UInt32?, group: UInt32?)? = nil
    ) throws(PortReuseError) {
        guard let (named, length) = Sys.unixAddress(path) else {
            throw PortReuseError(.bind, address: path, errno: .fileNameTooLong, diagnosis: .invalidAddress(reason: "a Unix socket's path is 1 to 107 bytes long"))
        }
        let descriptor = try retryingInterrupts(.socket, path) { Sys.unixStreamSocket() }
        let handle = SocketHandle(adopting: descriptor)
        if path.hasPrefix("@") {
            var address = named
            let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Sys.bind(descriptor, $0, length) } }
            if bound != 0 {
                let code = errno
                handle.close()
                throw Self.bindError(path, errno: code)
            }
            fileInode = nil
        } else {
            do {
                fileInode = try Self.bindFile(descriptor, at: path, permissions: permissions, owner: owner)
            } catch {
                handle.close()
                throw error
            }
        }
        guard Sys.listen(descriptor, backlog ?? Sys.defaultBacklog) == 0 else {
            let code = errno
            handle.close()
            if !path.hasPrefix("@") { unlink(path) }
            throw PortReuseError(.listen, address: path, errno: Errno(rawValue: code))
        }
        self.handle = handle
        self.path = path
    }

    /// Takes ownership of a listening Unix-domain stream socket this process received (socket activation, a
    /// parent). Throws, and leaves the descriptor open and unowned, when it is not one.
    public init(adopting descriptor: SocketDescriptor) throws(PortReuseError) {
        guard let name = Sys.unixSocketName(descriptor), Sys.isListeningStream(descriptor) else {
            throw PortReuseError(.adopt, diagnosis: .unusableDescriptor(reason: "descriptor \(descriptor) is not a listening Unix-domain stream socket."))
        }
        handle = SocketHandle(adopting: descriptor)
        path = name
        var info = stat()
        fileInode = !name.hasPrefix("@") && lstat(name, &info) == 0 && info.st_mode & S_IFMT == S_IFSOCK ? UInt64(info.st_ino) : nil
    }

    /// Waits for a connection and accepts it; the caller owns the new socket. The corresponding C function is
    /// `accept4` (`accept` elsewhere).
    public func accept(retryOnInterrupt: Bool = true) throws(PortReuseError) -> SocketHandle {
        let descriptor = try handle.live(.accept)
        let connection = try retryingInterrupts(.accept, path, retry: retryOnInterrupt) { Sys.accept(descriptor, nil, nil) }
        return SocketHandle(adopting: connection)
    }

    /// Accepts a connection if one arrives within `timeout`; `nil` otherwise.
    public func accept(timeout: Duration) throws(PortReuseError) -> SocketHandle? {
        guard try handle.wait(forWriting: false, timeout: timeout, .accept) else { return nil }
        return try accept()
    }

    /// Removes the socket file, if the path still names the file this listener bound (not one a newer server put
    /// there since). Whether it removed it. The socket itself stays open until ``close()``.
    @discardableResult
    public func removeFile() -> Bool {
        guard let fileInode else { return false }
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFSOCK, UInt64(info.st_ino) == fileInode else { return false }
        return unlink(path) == 0
    }

    /// Binds `descriptor` at `path` by the stale-file rule, with its permissions and owner (never set through a
    /// symbolic link). The inode of the file.
    private static func bindFile(
        _ descriptor: SocketDescriptor, at path: String, permissions: FilePermissions?, owner: (user: UInt32?, group: UInt32?)?
    ) throws(PortReuseError) -> UInt64 {
        let existing = UnixSocketFile.inspect(path)
        switch existing.state {
        case .live: throw bindError(path, errno: EADDRINUSE, inspected: existing)
        case .notASocket:
            throw PortReuseError(.bind, address: path, errno: .fileExists, diagnosis: .other("\(path) is a file that is not a socket: it is never replaced; remove it or choose another path."))
        case .stale: unlink(path)
        case .free: break
        }
        #if os(Linux)
        // Linux creates the file with the socket's own mode less the umask: set first, the file is never wider than asked.
        if let permissions { _ = fchmod(descriptor, mode_t(permissions.rawValue)) }
        #endif
        guard let (named, length) = Sys.unixAddress(path) else { throw PortReuseError(.bind, address: path, errno: .fileNameTooLong) }
        var address = named
        guard withUnsafePointer(to: &address, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Sys.bind(descriptor, $0, length) } }) == 0 else {
            throw bindError(path, errno: errno)
        }
        func failing(_ code: Int32, _ words: String) -> PortReuseError {
            unlink(path)
            return PortReuseError(.bind, address: path, errno: Errno(rawValue: code), diagnosis: .other(words))
        }
        if let permissions {
            // The umask may have taken bits away. Without /proc, glibc cannot chmod without following (EOPNOTSUPP):
            // the name was bound this instant by this process, then.
            var changed = fchmodat(AT_FDCWD, path, mode_t(permissions.rawValue), AT_SYMLINK_NOFOLLOW) == 0
            if !changed && errno == EOPNOTSUPP { changed = fchmodat(AT_FDCWD, path, mode_t(permissions.rawValue), 0) == 0 }
            if !changed { throw failing(errno, "cannot give \(path) the permissions \(String(permissions.rawValue, radix: 8))") }
        }
        if let owner, owner.user != nil || owner.group != nil,
            fchownat(AT_FDCWD, path, owner.user ?? UInt32.max, owner.group ?? UInt32.max, AT_SYMLINK_NOFOLLOW) != 0 {
            throw failing(errno, "cannot give \(path) its owner (changing a file's owner needs privilege)")
        }
        var info = stat()
        guard lstat(path, &info) == 0 else { throw failing(errno, "the socket file \(path) is gone") }
        return UInt64(info.st_ino)
    }

    /// EADDRINUSE (or another bind error) at `path`, with who holds it.
    private static func bindError(_ path: String, errno code: Int32, inspected: UnixSocketFile? = nil) -> PortReuseError {
        guard code == EADDRINUSE else { return PortReuseError(.bind, address: path, errno: Errno(rawValue: code)) }
        let report = inspected ?? UnixSocketFile.inspect(path)
        let holders = report.sockets.flatMap(\.processes).map { "\($0.name) (pid \($0.pid))" }
        let who = holders.isEmpty ? (report.processesMayBeMissing ? "a process this user cannot see" : "another process") : Array(Set(holders)).sorted().joined(separator: ", ")
        return PortReuseError(.bind, address: path, errno: .addressInUse, diagnosis: .other(
            "\(path) is live: a server accepts on it (held by \(who)). A live socket is never replaced: stop that server, or choose another path (portreuse who unix:\(path) tells more)."))
    }
}
#endif
