import PortReuse
import PortReuseSystem
import PortReuseInterception

/// What the shim does inside a program, and the environment that says it. The shim reads environment
/// variables only (documented in docs/run.md); this type is the one place where the
/// CLI writes them.
package struct ShimConfiguration: Sendable {
    /// The options every AF_INET/AF_INET6 socket gets before bind (`PORTREUSE_POLICY`).
    package var policy: SharingPolicy = .shared
    /// Rewrites the address and/or port of every bind (`PORTREUSE_BIND_ADDR`, `PORTREUSE_BIND_PORT`).
    package var bind: EndpointRewrite?
    /// Binds sockets the program did not bind to this address and/or port before connect(), or before
    /// sendto()/sendmsg() on UDP (`PORTREUSE_SOURCE_ADDR`, `PORTREUSE_SOURCE_PORT`).
    package var source: EndpointRewrite?
    /// Sets IP_TRANSPARENT (IPV6_TRANSPARENT on IPv6 sockets) before bind (`IP_TRANSPARENT`).
    package var transparent = false
    /// One line on stderr per call the shim changes (`PORTREUSE_VERBOSE`).
    package var verbose = false

    package init(policy: SharingPolicy, bind: EndpointRewrite?, source: EndpointRewrite?, transparent: Bool, verbose: Bool) {
        self.policy = policy
        self.bind = bind
        self.source = source
        self.transparent = transparent
        self.verbose = verbose
    }

    /// Every variable the shim reads: bindp's names and ours, and the shim's "said already" marker
    /// (`PORTREUSE_SHIM_WARNED`): a `portreuse run` starts a new process tree, which says its own bad settings.
    package static let shimVariables = [
        "PORTREUSE_POLICY", "PORTREUSE_VERBOSE", "PORTREUSE_BIND_ADDR", "PORTREUSE_BIND_PORT",
        "PORTREUSE_SOURCE_ADDR", "PORTREUSE_SOURCE_PORT",
        "REUSE_ADDR", "REUSE_PORT", "BIND_ADDR", "BIND_PORT", "IP_TRANSPARENT", "PORTREUSE_SHIM_WARNED",
    ]

    /// This configuration as variables, in a fixed order.
    package var variables: [(name: String, value: String)] {
        var result = [("PORTREUSE_POLICY", policy.rawValue)]
        if let ip = bind?.ip { result.append(("PORTREUSE_BIND_ADDR", ip.description)) }
        if let port = bind?.port { result.append(("PORTREUSE_BIND_PORT", String(port))) }
        if let ip = source?.ip { result.append(("PORTREUSE_SOURCE_ADDR", ip.description)) }
        if let port = source?.port, port != 0 { result.append(("PORTREUSE_SOURCE_PORT", String(port))) }
        if transparent { result.append(("IP_TRANSPARENT", "1")) }
        if verbose { result.append(("PORTREUSE_VERBOSE", "1")) }
        return result
    }

    /// The environment for a program: `inherited` (`NAME=value` entries, in order) without any variable the
    /// shim reads, so that this configuration is the whole of it, then this configuration's variables, and
    /// the shim first in LD_PRELOAD, before whatever was preloaded already (never replacing it).
    /// `dropped` names the inherited shim variables that were left out, sorted.
    package func environment(_ inherited: [String], library: ShimLibrary) throws(CommandFailure) -> (entries: [String], dropped: [String]) {
        // ld.so splits LD_PRELOAD at spaces and colons: a path with either cannot be preloaded.
        guard !library.path.contains(" "), !library.path.contains(":") else {
            throw CommandFailure(
                "the shim's path \(library.path) contains a space or a colon, which LD_PRELOAD cannot express: "
                    + "move portreuse and \(ShimLibrary.fileName) to a folder without them")
        }
        var entries: [String] = []
        var dropped: [String] = []
        var preloaded: [Substring] = []
        for entry in inherited {
            let name = entry.prefix { $0 != "=" }
            if name == "LD_PRELOAD" {
                preloaded = entry.dropFirst(name.count + 1).split(whereSeparator: { $0 == " " || $0 == ":" })
            } else if Self.shimVariables.contains(String(name)) {
                dropped.append(String(name))
            } else {
                entries.append(entry)
            }
        }
        entries += variables.map { "\($0.name)=\($0.value)" }
        let others = preloaded.filter { $0 != library.path }.map(String.init)
        entries.append("LD_PRELOAD=" + ([library.path] + others).joined(separator: ":"))
        return (entries, dropped.sorted())
    }
}

extension EndpointRewrite {
    /// What --bind and --source take, for their errors.
    package static let acceptedForms = "127.0.0.1:9000, :9000, 9000, 127.0.0.1, localhost:9000 or [::1]:9000 (no network prefix: TCP and UDP alike)"

    /// Parses `ADDR:PORT`, `:PORT`, `PORT`, `ADDR` or `[IPv6]`, with every address form of `Address`;
    /// a host name (`localhost:8080`) is resolved here, to its first IPv4 address if it has one, since the
    /// shim takes numbers only. Network prefixes (`tcp:`) are refused: the shim applies to both transports.
    package static func parse(_ text: String) throws(CommandFailure) -> EndpointRewrite {
        if let ip = IPAddress(text) { return EndpointRewrite(ip: ip) }
        if text.hasPrefix("["), text.hasSuffix("]"), let ip = IPAddress(String(text.dropFirst().dropLast())) {
            return EndpointRewrite(ip: ip)
        }
        let address: Address
        do {
            address = try Address(text)
        } catch {
            // A host name alone (`localhost`): an address without a port.
            guard !text.contains(":"), let named = try? Address(text + ":0"), case .name = named.host else {
                throw CommandFailure(error.description(acceptedForms: acceptedForms))
            }
            return EndpointRewrite(ip: try resolve(named, text), port: nil)
        }
        if let network = address.network {
            throw CommandFailure(
                "\"\(text)\": drop the network prefix \"\(network):\"; the shim applies to TCP and UDP sockets alike")
        }
        switch address.host {
        case .unspecified: return EndpointRewrite(ip: nil, port: address.port)
        case .ip(let ip): return EndpointRewrite(ip: ip, port: address.port)
        case .name: return EndpointRewrite(ip: try resolve(address, text), port: address.port)
        }
    }

    private static func resolve(_ address: Address, _ text: String) throws(CommandFailure) -> IPAddress {
        do {
            let all = try address.resolve()
            return (all.first { $0.family == .ipv4 } ?? all[0]).ip
        } catch {
            throw CommandFailure(error.description)
        }
    }
}
