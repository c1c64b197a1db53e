import PortReuse

/// An IP address and/or a port put into a program's socket calls: what `portreuse run --bind` rewrites every
/// bind to, and where `--source` binds a socket before it connects. The LD_PRELOAD shim reads the same value
/// from its environment (`BIND_ADDR`, `BIND_PORT`); the seccomp interceptor takes it in ``InterceptionRules``.
package struct EndpointRewrite: Sendable, Hashable, CustomStringConvertible {
    /// The address, or `nil` to keep the program's.
    package var ip: IPAddress?
    /// The port, or `nil` to keep the program's.
    package var port: UInt16?

    package init(ip: IPAddress?, port: UInt16? = nil) {
        self.ip = ip
        self.port = port
    }

    /// Whether it changes nothing.
    package var isEmpty: Bool { ip == nil && port == nil }

    /// `127.0.0.1:8080`, `[::1]` (address only) or `:8080` (port only).
    package var description: String {
        switch (ip, port) {
        case (let ip?, let port?): SocketAddress(ip: ip, port: port).description
        case (let ip?, nil): ip.family == .ipv6 ? "[\(ip)]" : ip.description
        case (nil, let port?): ":\(port)"
        case (nil, nil): "(nothing)"
        }
    }
}
