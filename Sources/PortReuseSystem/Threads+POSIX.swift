#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

#if canImport(Glibc) || canImport(Darwin)
/// A thread of the system's own (pthreads), for code that must not load Foundation or Dispatch: the demo's
/// server and load, the benchmarks, the interceptors' and the log's threads. It never takes asynchronous signals. The corresponding C functions are `pthread_create`, `pthread_join` and
/// `pthread_detach`.
package struct SystemThread: @unchecked Sendable {
    private let thread: pthread_t

    /// Starts a thread that runs `body`; joined with ``join()``, or detached with `detached`.
    package static func start(detached: Bool = false, _ body: @escaping @Sendable () -> Void) throws(SystemError) -> SystemThread {
        final class Box: @unchecked Sendable {
            let body: @Sendable () -> Void
            init(_ body: @escaping @Sendable () -> Void) { self.body = body }
        }
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        #if canImport(Glibc)
        var thread = pthread_t()
        #else
        var thread: pthread_t?
        #endif
        // The thread starts with every asynchronous signal blocked (it inherits this mask, restored here at once):
        // a process's signals belong to the thread that waits for them (up's loop, run's sigtimedwait), and one
        // taken by a worker thread's handler just before an in-place upgrade's execve would be lost.
        var all = sigset_t(), previous = sigset_t()
        sigfillset(&all)
        for synchronous in [SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT] { sigdelset(&all, synchronous) }
        pthread_sigmask(SIG_BLOCK, &all, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        let created = pthread_create(&thread, nil, { pointer in
            #if canImport(Glibc)
            Unmanaged<Box>.fromOpaque(pointer!).takeRetainedValue().body()
            #else
            Unmanaged<Box>.fromOpaque(pointer).takeRetainedValue().body()
            #endif
            return nil
        }, box)
        guard created == 0 else {
            Unmanaged<Box>.fromOpaque(box).release()
            throw SystemError("pthread_create", .init(rawValue: created))
        }
        #if canImport(Glibc)
        if detached { pthread_detach(thread) }
        return SystemThread(thread: thread)
        #else
        if detached { pthread_detach(thread!) }
        return SystemThread(thread: thread!)
        #endif
    }

    /// Waits until the thread's body returned.
    package func join() { pthread_join(thread, nil) }
}

/// Signal dispositions and masks, for the processes that handle their own signals (`up`, the demo, its server).
package enum Signals {
    /// Runs `handler` on each of `signals` (async-signal-safe code only: an atomic store, a write to a pipe),
    /// with SA_RESTART when `restart`, and SA_NOCLDSTOP. The corresponding C function is `sigaction`.
    package static func handle(_ signals: [Int32], restart: Bool, with handler: @escaping @convention(c) (Int32) -> Void) {
        install(handler, on: signals, flags: (restart ? SA_RESTART : 0) | SA_NOCLDSTOP)
    }

    /// Ignores `signal` (SIGPIPE: a peer that went away is an error, not a death).
    package static func ignore(_ signal: Int32) { install(SIG_IGN, on: [signal], flags: 0) }

    /// Sends `signal` to the calling thread. The corresponding C function is `raise`.
    package static func raise(_ signal: Int32) { _ = Glibc.raise(signal) }

    /// Back to the default action (a process that ends itself by the signal a child ended by).
    package static func restoreDefault(_ signal: Int32) { install(SIG_DFL, on: [signal], flags: 0) }

    private static func install(_ handler: (@convention(c) (Int32) -> Void)?, on signals: [Int32], flags: Int32) {
        var action = sigaction()
        #if canImport(Glibc)
        action.__sigaction_handler.sa_handler = handler
        #else
        action.__sigaction_u.__sa_handler = handler
        #endif
        sigemptyset(&action.sa_mask)
        action.sa_flags = flags
        for signal in signals { sigaction(signal, &action, nil) }
    }

    /// Blocks (`true`) or unblocks `signals` for the calling thread. The corresponding C function is
    /// `pthread_sigmask`.
    package static func setBlocked(_ signals: [Int32], _ blocked: Bool) {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        pthread_sigmask(blocked ? SIG_BLOCK : SIG_UNBLOCK, &set, nil)
    }

    /// Unblocks every signal for the calling thread: a parent (a test runner's thread) may have blocked some.
    package static func unblockAll() {
        var none = sigset_t()
        sigemptyset(&none)
        pthread_sigmask(SIG_SETMASK, &none, nil)
    }

    #if os(Linux)
    /// Signals a thread takes one by one (``next(timeout:)``) instead of by a handler: blocked for the calling
    /// thread (and the threads it starts from then on) until ``restore()``. The corresponding C functions are
    /// `pthread_sigmask` and `sigtimedwait`.
    package struct Waited {
        private var set = sigset_t()
        private var previous = sigset_t()

        /// Blocks `signals` for the calling thread, keeping its mask to restore.
        package init(_ signals: [Int32]) {
            sigemptyset(&set)
            for signal in signals { sigaddset(&set, signal) }
            pthread_sigmask(SIG_BLOCK, &set, &previous)
        }

        /// The next of the signals within `timeout` seconds, and whether the kernel sent it (a terminal's signal,
        /// SI_KERNEL, which went to the whole foreground process group); `nil` when none came.
        package mutating func next(timeout seconds: Int) -> (signal: Int32, fromKernel: Bool)? {
            var info = siginfo_t()
            var timeout = timespec(tv_sec: seconds, tv_nsec: 0)
            let number = sigtimedwait(&set, &info, &timeout)
            return number > 0 ? (number, info.si_code == 0x80) : nil
        }

        /// The calling thread's mask as it was.
        package mutating func restore() { pthread_sigmask(SIG_SETMASK, &previous, nil) }
    }

    /// Ignores SIGPIPE until the returned closure runs, which puts back what was there.
    package static func ignoringBrokenPipes() -> () -> Void {
        let previous = signal(SIGPIPE, SIG_IGN)
        return { _ = signal(SIGPIPE, previous) }
    }
    #endif
}

/// A lock with a condition threads wait on: a pthread mutex and condition variable, allocated so that they never
/// move. `withLock` runs a body under the lock; `wait` (under the lock) sleeps until another thread signals.
package final class ConditionLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    package init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Runs `body` holding the lock.
    package func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Under the lock: sleeps until ``signal()`` or ``broadcast()`` (or a spurious wake-up: check again), at most
    /// `seconds` when given. Whether it was woken rather than timed out.
    @discardableResult
    package func wait(seconds: Double? = nil) -> Bool {
        guard let seconds else { return pthread_cond_wait(condition, mutex) == 0 }
        var deadline = timespec()
        clock_gettime(CLOCK_REALTIME, &deadline)
        let nanoseconds = Int(deadline.tv_nsec) + Int(seconds * 1e9)
        deadline.tv_sec += nanoseconds / 1_000_000_000
        deadline.tv_nsec = nanoseconds % 1_000_000_000
        return pthread_cond_timedwait(condition, mutex, &deadline) == 0
    }

    /// Wakes one waiting thread.
    package func signal() { pthread_cond_signal(condition) }

    /// Wakes every waiting thread.
    package func broadcast() { pthread_cond_broadcast(condition) }
}
#endif
