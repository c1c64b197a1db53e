import NIOCore
import PortReuse

/// How a ``PortReuseServer`` with one listener per loop steers connections to loops by CPU, on Linux.
///
/// Both choices pin event loop i to CPU i (modulo the CPU count) and make the kernel pick the listener of
/// the CPU that handled the connection's first packet, instead of a hash of its addresses, so that a
/// connection is served where the kernel already touched it. Whether that pays depends on the machine and on
/// where the network card's interrupts land: measure (`nio-bench` does) before turning it on.
public enum CPUSteering: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// The kernel's hash of the 4-tuple picks the listener (the default).
    case none
    /// `SO_INCOMING_CPU` on each listener: the kernel prefers the listener whose CPU matches (Linux 6.1+ for
    /// `SO_REUSEPORT` groups).
    case incomingCPU = "incoming-cpu"
    /// A classic BPF program on the `SO_REUSEPORT` group (`SO_ATTACH_REUSEPORT_CBPF`) that returns the
    /// listener index `cpu % listeners`.
    case reuseportCBPF = "reuseport-cbpf"

    public var description: String { rawValue }

    /// Pins the loops and sets the options on listeners that are bound and listening, before SwiftNIO adopts them.
    func apply(to listeners: [Listener], loops: [any EventLoop]) async throws {
        guard self != .none else { return }
        let cpus = Steering.cpuCount
        for (index, loop) in loops.enumerated() {
            let cpu = index % cpus
            try await loop.submit { try Steering.pinCurrentThread(to: cpu) }.get()
        }
        for (index, listener) in listeners.enumerated() {
            let label = "tcp:\(listener.localAddress)"
            guard let descriptor = listener.descriptor else { continue }
            switch self {
            case .none:
                break
            case .incomingCPU:
                try Steering.setIncomingCPU(descriptor, index % cpus, address: label)
            case .reuseportCBPF:
                if index == 0 { try Steering.attachCPUProgram(descriptor, listeners: listeners.count, address: label) }
            }
        }
    }
}
