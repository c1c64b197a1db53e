#if os(Linux)
import Glibc
import PortReuse

/// Linux's calls behind ``CPUSteering``.
enum Steering {
    /// The CPUs this process may run on.
    static var cpuCount: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// Glibc's module map hides sched_setaffinity (it needs _GNU_SOURCE), so it is looked up once.
    private typealias SetAffinity = @convention(c) (pid_t, Int, UnsafeRawPointer) -> Int32
    private static let setAffinity = unsafeBitCast(dlsym(dlopen(nil, RTLD_NOW), "sched_setaffinity")!, to: SetAffinity.self)

    /// The corresponding C function is `sched_setaffinity` on the calling thread (pid 0).
    static func pinCurrentThread(to cpu: Int) throws {
        var set = cpu_set_t()
        withUnsafeMutableBytes(of: &set) { bytes in bytes[cpu / 8] |= UInt8(1) << UInt8(cpu % 8) }
        guard setAffinity(0, MemoryLayout<cpu_set_t>.size, &set) == 0 else {
            throw PortReuseError(.setOption("sched_setaffinity"), errno: .init(rawValue: errno),
                diagnosis: .other("cannot pin an event loop to CPU \(cpu)."))
        }
    }

    /// `SO_INCOMING_CPU` (49). The corresponding C function is `setsockopt`.
    static func setIncomingCPU(_ descriptor: Int32, _ cpu: Int, address: String) throws {
        var value = Int32(cpu)
        guard setsockopt(descriptor, SOL_SOCKET, 49, &value, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw PortReuseError(.setOption("SO_INCOMING_CPU"), address: address, errno: .init(rawValue: errno))
        }
    }

    /// One instruction of classic BPF (`struct sock_filter`).
    private struct Instruction { var code: UInt16; var jt: UInt8; var jf: UInt8; var k: UInt32 }
    /// `struct sock_fprog`.
    private struct Program { var length: UInt16; var filter: UnsafeMutablePointer<Instruction>? }

    /// `SO_ATTACH_REUSEPORT_CBPF` (51) with `A = cpu; A %= listeners; return A`: the listener at index
    /// `cpu % listeners` in the group, which is the order in which they were bound. The corresponding C
    /// function is `setsockopt`.
    static func attachCPUProgram(_ descriptor: Int32, listeners: Int, address: String) throws {
        var instructions = [
            Instruction(code: 0x20, jt: 0, jf: 0, k: UInt32(bitPattern: -0x1000 + 36)),  // BPF_LD|BPF_W|BPF_ABS, SKF_AD_OFF + SKF_AD_CPU
            Instruction(code: 0x94, jt: 0, jf: 0, k: UInt32(listeners)),                  // BPF_ALU|BPF_MOD|BPF_K
            Instruction(code: 0x16, jt: 0, jf: 0, k: 0),                                  // BPF_RET|BPF_A
        ]
        let result = instructions.withUnsafeMutableBufferPointer { buffer in
            var program = Program(length: UInt16(buffer.count), filter: buffer.baseAddress)
            return setsockopt(descriptor, SOL_SOCKET, 51, &program, socklen_t(MemoryLayout<Program>.size))
        }
        guard result == 0 else {
            throw PortReuseError(.setOption("SO_ATTACH_REUSEPORT_CBPF"), address: address, errno: .init(rawValue: errno))
        }
    }
}
#else
import PortReuse

/// ``CPUSteering`` exists on Linux only.
enum Steering {
    static var cpuCount: Int { 1 }

    private static func unsupported(_ name: String) -> PortReuseError {
        PortReuseError(.setOption(name), diagnosis: .other("CPU steering (\(name)) exists on Linux only: use CPUSteering.none."))
    }

    static func pinCurrentThread(to cpu: Int) throws { throw unsupported("sched_setaffinity") }
    static func setIncomingCPU(_ descriptor: Int32, _ cpu: Int, address: String) throws { throw unsupported("SO_INCOMING_CPU") }
    static func attachCPUProgram(_ descriptor: Int32, listeners: Int, address: String) throws { throw unsupported("SO_ATTACH_REUSEPORT_CBPF") }
}
#endif
