#if os(Linux)
import CPortReuseSystem
import Glibc

/// The BPF programs `portreuse up` attaches to a SO_REUSEPORT group, and the eBPF map of its sockets: the calls,
/// for `up`'s steering (Steering.swift holds the programs as data).
package enum ReuseportPrograms {
    /// One classic BPF instruction (`struct sock_filter`).
    package struct Instruction: Equatable, Sendable {
        package var code: UInt16
        package var jt: UInt8
        package var jf: UInt8
        package var k: UInt32

        package init(code: UInt16, jt: UInt8, jf: UInt8, k: UInt32) {
            self.code = code
            self.jt = jt
            self.jf = jf
            self.k = k
        }
    }

    /// Attaches a classic program to the group of `descriptor` (`SO_ATTACH_REUSEPORT_CBPF`); 0, or the errno.
    package static func attachClassic(_ program: [Instruction], to descriptor: Descriptor) -> Int32 {
        let instructions = program.map { csystem_bpf_instruction(code: $0.code, jt: $0.jt, jf: $0.jf, k: $0.k) }
        return instructions.withUnsafeBufferPointer { csystem_attach_reuseport_cbpf(descriptor.rawValue, $0.baseAddress, UInt16($0.count)) } == 0 ? 0 : errno
    }

    /// A new `REUSEPORT_SOCKARRAY` map of `capacity` sockets (close-on-exec), or the errno (EPERM without CAP_BPF).
    package static func makeMap(capacity: UInt32) -> (descriptor: Descriptor?, errno: Int32) {
        let descriptor = csystem_reuseport_map_create(capacity)
        return descriptor >= 0 ? (Descriptor(descriptor), 0) : (nil, errno)
    }

    /// Puts `socket` in `map` under `key`; 0, or the errno.
    package static func setMapEntry(_ map: Descriptor, key: UInt32, socket: Descriptor) -> Int32 {
        csystem_reuseport_map_set(map.rawValue, key, socket.rawValue) == 0 ? 0 : errno
    }

    /// Loads the `SK_REUSEPORT` program that picks the socket at one of the `serving` keys of `map` (by the
    /// connection's hash), or at `probe` (>= 0) for connections from one of `ports`, and attaches it to the group of
    /// `socket`; 0, or the errno with the verifier's words.
    package static func attachExtended(to socket: Descriptor, map: Descriptor, serving: [UInt32], probe: Int32, ports: [UInt16]) -> (errno: Int32, log: String) {
        var log = [CChar](repeating: 0, count: 4096)
        let result = ports.withUnsafeBufferPointer { ports in
            serving.withUnsafeBufferPointer { serving in
                csystem_attach_reuseport_ebpf(
                    socket.rawValue, map.rawValue, serving.baseAddress, UInt32(serving.count), probe, ports.baseAddress, UInt32(ports.count), &log, UInt32(log.count))
            }
        }
        let code = result == 0 ? 0 : errno
        return (code, code == 0 ? "" : String(decoding: log.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
}
#endif
