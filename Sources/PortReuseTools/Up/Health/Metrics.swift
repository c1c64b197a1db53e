import PortReuse
import PortReuseSystem

/// What `/metrics` and a reload's report read from the kernel when they are asked (never at every turn of the loop).
package struct KernelReadings: Sendable {
    /// The connections accepted on the held listeners (established TCP sockets on a held listener's port) that
    /// each generation's processes hold (a socket shared by several of them once).
    package var connections: [Int: Int] = [:]
    /// Each held listener's accept queue (by inode): waiting connections, and the backlog.
    package var queues: [UInt64: (depth: Int, backlog: Int?)] = [:]
    /// TcpExt ListenOverflows and ListenDrops of `up`'s network namespace (/proc/net/netstat).
    package var listenOverflows: UInt64?
    package var listenDrops: UInt64?

    package init() {}

    /// The held listeners' queues through `up`'s own sockets (TCP_INFO), each generation's connections, and the
    /// listen counters.
    package static func read(generations: [HealthSnapshot.GenerationView], listeners: [HealthListener]) -> KernelReadings {
        var readings = KernelReadings()
        // The inode check skips a descriptor the supervisor's thread retired (and maybe reused) since the snapshot.
        for listener in listeners where GenerationProbe.inode(of: listener.descriptor) == listener.inode {
            if let queue = acceptQueue(of: listener.descriptor) { readings.queues[listener.inode] = (queue.depth, queue.backlog) }
        }
        readings.connections = connections(of: generations, listeners: listeners)
        (readings.listenOverflows, readings.listenDrops) = listenCounters()
        return readings
    }

    /// Each generation's connections accepted on `listeners`, through duplicates of its processes' own descriptors
    /// (pidfd_getfd, as `who` reads options). This walks no table of the kernel's: a walk of the connection table
    /// costs every socket of the host, TIME-WAIT ones of every network namespace included (6 ms of CPU with 51,000
    /// of them, once per reload). Where a duplicate is refused (no ptrace rights over the program), that process's
    /// sockets are looked up in the table instead, filtered by port in the kernel.
    package static func connections(
        of generations: [HealthSnapshot.GenerationView], listeners: [HealthListener], tree: Processes.Tree = Processes.Tree()
    ) -> [Int: Int] {
        var counts: [Int: Int] = [:]
        let endpoints = Set(listeners.map { Self.endpoint($0.address) })
        let held = Set(listeners.map(\.inode))
        var fromTable: Set<UInt64>?
        for generation in generations {
            var connections = Set<UInt64>()
            for pid in Set(generation.pids + tree.descendants(of: generation.pids[0]).map(\.pid)) {
                if let found = acceptedConnections(of: pid, on: endpoints, skipping: held) {
                    connections.formUnion(found)
                } else {
                    if fromTable == nil { fromTable = acceptedConnectionsFromTable(on: endpoints) }
                    connections.formUnion(Processes.socketInodes(of: pid).intersection(fromTable!))
                }
            }
            counts[generation.number] = connections.count
        }
        return counts
    }

    /// The accept queue of a listening TCP socket of ours: TCP_INFO gives the connections waiting in it
    /// (tcpi_unacked) and its limit, the listen backlog (tcpi_sacked), in one system call.
    static func acceptQueue(of descriptor: Descriptor) -> (depth: Int, backlog: Int)? {
        SocketReadings.tcp(descriptor).map { ($0.queued, $0.backlog) }
    }

    /// TcpExt ListenOverflows and ListenDrops of this network namespace, from /proc/net/netstat (the kernel sums
    /// them over every CPU at each read).
    package static func listenCounters() -> (overflows: UInt64?, drops: UInt64?) {
        guard let text = Files.read("/proc/net/netstat", limit: 1 << 16) else { return (nil, nil) }
        let counters = netstat(text, group: "TcpExt", names: ["ListenOverflows", "ListenDrops"])
        return (counters["ListenOverflows"], counters["ListenDrops"])
    }

    /// The inodes of the sockets of `pid` that are established TCP connections on one of `endpoints` (a held
    /// listener's port, with its family's any-address), each seen through a duplicate that is closed at once: five
    /// system calls a socket. `nil` when the kernel refuses a duplicate (no ptrace rights over `pid`, or Linux before 5.6).
    static func acceptedConnections(of pid: Int32, on endpoints: Set<SocketAddress>, skipping held: Set<UInt64>) -> Set<UInt64>? {
        guard let pidfd = try? Processes.open(pid) else { return [] }  // gone
        defer { Files.close(pidfd) }
        var found = Set<UInt64>()
        for entry in Files.list("/proc/\(pid)/fd") {
            guard let descriptor = Descriptor(entry), let inode = Processes.socketInode(of: pid, descriptor: descriptor), !held.contains(inode) else { continue }
            let duplicate: Descriptor
            do throws(SystemError) {
                duplicate = try Processes.duplicate(descriptor, of: pidfd)
            } catch {
                if error.errno == .badFileDescriptor { continue }  // closed meanwhile
                return nil
            }
            let handle = SocketHandle(adopting: duplicate)
            defer { handle.close() }
            // The inode check skips a descriptor number reused meanwhile.
            guard GenerationProbe.inode(of: duplicate) == inode, SocketReadings.tcp(duplicate)?.state == SocketReadings.established,
                let local = try? handle.localAddress(), endpoints.contains(endpoint(local))
            else { continue }
            found.insert(inode)
        }
        return found
    }

    /// The same connections from the kernel's table: one walk per family, filtered by port in the kernel.
    private static func acceptedConnectionsFromTable(on endpoints: Set<SocketAddress>) -> Set<UInt64> {
        Set(endpoints.flatMap { endpoint in
            PortHolder.find(port: endpoint.port, transport: .tcp, states: [.established], family: endpoint.family, processes: false, options: false)
                .map(\.inode).filter { $0 != 0 }
        })
    }

    /// A listener's or a connection's local address as the port and family alone.
    private static func endpoint(_ address: SocketAddress) -> SocketAddress {
        SocketAddress(ip: address.family == .ipv4 ? .anyIPv4 : .anyIPv6, port: address.port)
    }

    /// Counters of one group of /proc/net/netstat (or /proc/net/snmp), a line of names after `GROUP:` and then a
    /// line of values: those in `names`, found in the bytes as read (0.05 ms; parsing the whole text as Swift
    /// strings took 0.25 to 0.4 ms, and a reload reads it twice).
    package static func netstat(_ text: [UInt8], group: String, names: [String]) -> [String: UInt64] {
        let prefix = Array((group + ":").utf8)
        let lines = text.split(separator: UInt8(ascii: "\n")).filter { $0.starts(with: prefix) }
        guard lines.count >= 2 else { return [:] }
        let wanted = names.map { (name: $0, bytes: Array($0.utf8)) }
        let fields = { (line: ArraySlice<UInt8>) in line.split(separator: UInt8(ascii: " ")).dropFirst() }
        var counters: [String: UInt64] = [:]
        for (name, value) in zip(fields(lines[0]), fields(lines[1])) {
            guard let match = wanted.first(where: { $0.bytes.elementsEqual(name) }) else { continue }
            counters[match.name] = UInt64(String(decoding: value, as: UTF8.self))
        }
        return counters
    }
}

/// `/metrics` in the Prometheus text exposition format 0.0.4: `# HELP`, `# TYPE`, then the samples.
package enum Metrics {
    package static func render(_ snapshot: HealthSnapshot, listeners: [HealthListener], kernel: KernelReadings) -> String {
        var text = ""
        func family(_ name: String, _ type: String, _ help: String, _ samples: [(labels: [(String, String)], value: String)]) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for sample in samples {
                let labels = sample.labels.map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ",")
                text += name + (labels.isEmpty ? "" : "{\(labels)}") + " \(sample.value)\n"
            }
        }
        let counters = snapshot.counters
        let (ready, _) = snapshot.readiness
        family("portreuse_up_ready", "gauge", "1 while a generation is ready and up is not stopping (what /readyz says), else 0.", [([], ready ? "1" : "0")])
        family("portreuse_up_generations", "gauge", "Generations of the program by phase.", GenerationPhase.allCases.map { phase in
            ([("phase", phase.rawValue)], "\(snapshot.generations.filter { $0.phase == phase }.count)")
        })
        family("portreuse_up_reloads_total", "counter", "Reloads by result since this up started.", [
            ([("result", ReloadResult.ready.rawValue)], "\(counters.reloadsReady)"), ([("result", ReloadResult.failed.rawValue)], "\(counters.reloadsFailed)"),
        ])
        family("portreuse_up_last_reload_duration_seconds", "gauge", "How long the last reload took, from its start to ready or failed (no sample before the first).",
            counters.lastReloadSeconds.map { [([], "\($0)")] } ?? [])
        family("portreuse_up_restarts_total", "counter", "Generations started after a crash or a failed start while nothing served.", [([], "\(counters.restarts)")])
        family("portreuse_up_retired_queue_resets_total", "counter", "Connections still queued on a generation's own socket when up retired it, which the kernel reset.",
            [([], "\(counters.resetAtRetire)")])
        let pools = snapshot.generations.compactMap { generation in generation.workers.map { (generation.number, $0) } }
        family("portreuse_up_generation_workers", "gauge", "--workers: the workers of each generation, and how many of them are ready.",
            pools.flatMap { number, workers in
                [([("generation", "\(number)"), ("state", "all")], "\(workers.total)"), ([("generation", "\(number)"), ("state", "ready")], "\(workers.ready)")]
            })
        family("portreuse_up_worker_replacements_total", "counter", "--workers: workers that exited while their generation served, replaced alone.",
            [([], "\(counters.workerReplacements)")])
        family("portreuse_up_generation_connections", "gauge", "Connections accepted on the held listeners (established TCP sockets on their ports) that the processes of each generation hold.",
            kernel.connections.sorted { $0.key < $1.key }.map { ([("generation", "\($0.key)")], "\($0.value)") })
        let rows = listeners.compactMap { listener in kernel.queues[listener.inode].map { (listener, $0) } }
        family("portreuse_up_listener_queue_depth", "gauge", "Connections waiting in each held listener's accept queue.",
            rows.map { ([("listener", "\($0.0.address)"), ("name", $0.0.name)], "\($0.1.depth)") })
        family("portreuse_up_listener_backlog", "gauge", "The length each held listener's accept queue may reach (its listen backlog).",
            rows.compactMap { row in row.1.backlog.map { ([("listener", "\(row.0.address)"), ("name", row.0.name)], "\($0)") } })
        family("portreuse_up_tcp_listen_overflows_total", "counter", "TcpExt ListenOverflows of up's network namespace since this up started: times a full accept queue, of any listener, refused a connection.",
            kernel.listenOverflows.map { [([], "\($0)")] } ?? [])
        family("portreuse_up_tcp_listen_drops_total", "counter", "TcpExt ListenDrops of up's network namespace since this up started: connection requests any listener dropped (overflows included).",
            kernel.listenDrops.map { [([], "\($0)")] } ?? [])
        return text
    }

    /// A label value as the format wants it: backslash, double quote and newline escaped.
    static func escape(_ value: String) -> String {
        var out = ""
        for character in value {
            switch character {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }
}
