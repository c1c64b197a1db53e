#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import PortReuseSystem
import Synchronization

#if canImport(Glibc) || canImport(Darwin)
/// A unix datagram socket that receives one generation's sd_notify messages (`NOTIFY_SOCKET`).
package final class NotifyReceiver: Sendable {
    package let path: String
    package let descriptor: Descriptor
    private let isOpen = Atomic<Bool>(true)

    package init(descriptor: Descriptor, path: String) {
        self.descriptor = descriptor
        self.path = path
    }

    /// A new socket at `path` (a stale file there is replaced).
    package convenience init(path: String) throws(SystemError) {
        self.init(descriptor: Descriptor(try Sys.unixDatagramReceiver(at: path)), path: path)
    }

    /// The assignments received since the last call (`READY=1`, `STATUS=…`), in order.
    package func take() -> [String] {
        var buffer = [UInt8](repeating: 0, count: 4096)
        var lines: [String] = []
        while true {
            let count = recv(descriptor.rawValue, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            guard count > 0 else { return lines }
            lines += String(decoding: buffer[0..<count], as: UTF8.self).split(separator: "\n").map(String.init)
        }
    }

    /// Closes the socket and removes its file, once (later calls, and the deinit, do nothing).
    package func close() {
        guard isOpen.exchange(false, ordering: .relaxed) else { return }
        Files.close(descriptor)
        unlink(path)
    }

    deinit { close() }
}
#endif
