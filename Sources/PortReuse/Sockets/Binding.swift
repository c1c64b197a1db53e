import SystemPackage

extension SocketHandle {
    /// socket, the policy's options, IPV6_V6ONLY, bind: the one path every bound socket of PortReuse takes.
    /// A failed bind comes back diagnosed (who holds the port, a privileged port, an address not on this machine).
    /// `options` replaces the policy's row (multicast and broadcast receivers read their own row); `prepare`
    /// sets further options before the bind.
    package static func bound(
        to address: SocketAddress, transport: Transport, policy: SharingPolicy, dualStack: Bool,
        options: ReuseOptions? = nil, prepare: (SocketHandle) throws(PortReuseError) -> Void = { _ in }
    ) throws(PortReuseError) -> SocketHandle {
        if dualStack && address.family != .ipv6 {
            throw PortReuseError(.bind, address: address.label(transport), diagnosis: .dualStackNeedsIPv6)
        }
        let descriptor = try retryingInterrupts(.socket, address.label(transport)) { Sys.socket(address.family, transport) }
        let handle = SocketHandle(adopting: descriptor)
        try handle.enable(options ?? SharingTable.current.options(policy, transport))
        if address.family == .ipv6 {
            try handle.setOption(Sys.ipv6Level, Sys.ipv6Only, dualStack ? 0 : 1, label: "IPV6_V6ONLY")
        }
        try prepare(handle)
        do {
            try handle.bind(to: address, transport: transport)
        } catch {
            throw error.diagnosingBind(address, transport: transport, policy: policy)
        }
        return handle
    }

    /// bind() alone: no option set, no diagnosis (`transport` only names the address in the error).
    package func bind(to address: SocketAddress, transport: Transport) throws(PortReuseError) {
        let descriptor = try live(.bind)
        try address.withSockAddr { (pointer, length) throws(PortReuseError) in
            _ = try retryingInterrupts(.bind, address.label(transport)) { Sys.bind(descriptor, pointer, length) }
        }
    }
}

extension PortReuseError {
    /// Adds what can be found out about a failed bind.
    func diagnosingBind(_ address: SocketAddress, transport: Transport, policy: SharingPolicy) -> PortReuseError {
        var error = self
        switch errno {
        case .addressInUse?:
            // Who holds the port is read from the kernel's tables and /proc only when someone asks.
            return PortReuseError(operation, address: self.address, errno: errno) {
                .portInUse(PortInUse.explain(address, transport: transport, policy: policy))
            }
        case .permissionDenied?, .notPermitted?:
            let first = KernelTables.firstUnprivilegedPort()
            if Int(address.port) < first && address.port != 0 {
                error.diagnosis = .privilegedPort(port: address.port, firstUnprivileged: first)
            }
        case .addressNotAvailable?:
            error.diagnosis = .addressNotLocal(address.ip)
        default:
            break
        }
        return error
    }
}

extension SocketAddress {
    /// `tcp:127.0.0.1:8080`: the address with its transport, as errors show it.
    func label(_ transport: Transport) -> String { "\(transport.rawValue):\(self)" }
}
