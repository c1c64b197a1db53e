import PortReuse

/// What `/metrics` reads from the kernel when it is asked (never at every turn of the loop).
package struct KernelReadings: Sendable {
    /// Established TCP sockets held by each generation's processes (a socket shared by several of them once).
    package var connections: [Int: Int] = [:]
    /// Each held listener's accept queue (by inode): waiting connections, and the backlog (sock_diag only).
    package var queues: [UInt64: (depth: Int, backlog: Int?)] = [:]
    /// TcpExt ListenOverflows and ListenDrops of `up`'s network namespace (/proc/net/netstat).
    package var listenOverflows: UInt64?
    package var listenDrops: UInt64?

    package init() {}

    /// One scan of the TCP table with its processes (as `portreuse who` reads it), and /proc/net/netstat.
    package static func read(generations: [HealthSnapshot.GenerationView], listeners: [HealthListener]) -> KernelReadings {
        var readings = KernelReadings()
        let sockets = PortHolder.all(transport: .tcp, states: [.established, .listen], processes: true, options: false)
        var generationOf: [Int32: Int] = [:]
        for generation in generations {
            let pids = generation.pids + Processes.descendants(of: generation.pids[0]).map(\.pid)
            for pid in pids { generationOf[pid] = generation.number }
            readings.connections[generation.number] = 0
        }
        let held = Set(listeners.map(\.inode))
        for socket in sockets {
            switch socket.state {
            case .listen where held.contains(socket.inode):
                readings.queues[socket.inode] = (socket.receiveQueue, socket.backlog)
            case .established:
                for number in Set(socket.processes.compactMap { generationOf[$0.pid] }) { readings.connections[number, default: 0] += 1 }
            default:
                break
            }
        }
        if let text = Files.read("/proc/net/netstat") {
            let counters = netstat(String(decoding: text, as: UTF8.self), group: "TcpExt")
            readings.listenOverflows = counters["ListenOverflows"]
            readings.listenDrops = counters["ListenDrops"]
        }
        return readings
    }

    /// One group of /proc/net/netstat (or /proc/net/snmp): a line of names after `GROUP:`, then a line of values.
    package static func netstat(_ text: String, group: String) -> [String: UInt64] {
        let lines = text.split(separator: "\n").filter { $0.hasPrefix(group + ":") }
        guard lines.count >= 2 else { return [:] }
        let names = lines[0].split(separator: " ").dropFirst(), values = lines[1].split(separator: " ").dropFirst()
        var counters: [String: UInt64] = [:]
        for (name, value) in zip(names, values) { counters[String(name)] = UInt64(value) }
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
        family("portreuse_up_generation_connections", "gauge", "Established TCP sockets held by the processes of each generation.",
            kernel.connections.sorted { $0.key < $1.key }.map { ([("generation", "\($0.key)")], "\($0.value)") })
        let rows = listeners.compactMap { listener in kernel.queues[listener.inode].map { (listener, $0) } }
        family("portreuse_up_listener_queue_depth", "gauge", "Connections waiting in each held listener's accept queue.",
            rows.map { ([("listener", $0.0.address), ("name", $0.0.name)], "\($0.1.depth)") })
        family("portreuse_up_listener_backlog", "gauge", "The length each held listener's accept queue may reach (its listen backlog).",
            rows.compactMap { row in row.1.backlog.map { ([("listener", row.0.address), ("name", row.0.name)], "\($0)") } })
        family("portreuse_up_tcp_listen_overflows_total", "counter", "TcpExt ListenOverflows of up's network namespace: times a full accept queue, of any listener, refused a connection.",
            kernel.listenOverflows.map { [([], "\($0)")] } ?? [])
        family("portreuse_up_tcp_listen_drops_total", "counter", "TcpExt ListenDrops of up's network namespace: connection requests any listener dropped (overflows included).",
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
