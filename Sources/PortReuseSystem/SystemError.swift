#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SystemPackage

#if canImport(Glibc) || canImport(Darwin)

/// A system call that failed: its name and the errno it left. The one error type of the system layer, which
/// PortReuseNIO, the CLI's library and the tests share; the library's public API turns it into a
/// ``PortReuseError`` that names the operation and the address.
package struct SystemError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The C function, as in `pidfd_getfd`.
    package var call: String
    /// What it set errno to (or returned, for calls such as the pthread functions that return the code).
    package var errno: Errno

    package init(_ call: String, _ errno: Errno) {
        self.call = call
        self.errno = errno
    }

    /// `call: No such process`.
    package var description: String { "\(call): \(errno.description)" }
}

/// The errors only a bug in this program causes: a descriptor it does not hold (closed twice, never opened) and
/// a pointer that is not its memory. A call that gets one stops the process with a message, as NIOPosix's
/// `preconditionIsNotUnacceptableErrno` does, instead of passing for a failure to handle (or to swallow with
/// `try?`).
package let programmerErrors: Set<Errno> = [.badFileDescriptor, .badAddress]

/// Stops the process when `code`, left by `name`, is one of `unacceptable` (``programmerErrors``).
@inline(__always)
package func preconditionAcceptable(_ code: Errno, from name: String, unacceptable: Set<Errno> = programmerErrors) {
    precondition(!unacceptable.contains(code), "\(name): \(code) (a bug: a descriptor this process does not hold, or memory that is not its own)")
}

/// Runs a C call that returns -1 and sets errno when it fails: its value, or a ``SystemError`` naming it.
/// With `retryOnInterrupt` (the default) a call interrupted by a signal (EINTR) runs again; pass false where
/// an interruption must reach the caller (a poll loop that reads its signals afterwards). An error of
/// `unacceptable` is a bug and stops the process (``preconditionAcceptable(_:from:unacceptable:)``); a call
/// whose EBADF or EFAULT can come from elsewhere (another process's descriptor or memory) narrows the set.
/// Modelled on swift-system's `valueOrErrno(retryOnInterrupt:)`.
@inline(__always)
package func systemCall<Result: FixedWidthInteger>(
    _ name: String, retryOnInterrupt: Bool = true, unacceptable: Set<Errno> = programmerErrors, _ body: () -> Result
) throws(SystemError) -> Result {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = Errno(rawValue: errno)
        if retryOnInterrupt && code == .interrupted { continue }
        preconditionAcceptable(code, from: name, unacceptable: unacceptable)
        throw SystemError(name, code)
    }
}

/// The same for calls that return the error code itself (0 on success), as `posix_spawn` and the pthread
/// functions do.
@inline(__always)
package func systemCallReturningCode(_ name: String, _ body: () -> Int32) throws(SystemError) {
    let code = body()
    if code != 0 { throw SystemError(name, Errno(rawValue: code)) }
}
#endif

#if canImport(Glibc) || canImport(Darwin)
extension Errno {
    /// What the last failed C call of this thread left in errno.
    package static var current: Errno { Errno(rawValue: errno) }
}
#endif
