import PortReuse
import PortReuseSystem

/// What `portreuse demo` was asked to do (checked by the command before it runs).
package struct DemoOptions: Sendable {
    package var workers = 4
    package var seconds = 5.0
    package var restarts = 5
    package var clients = 8
    package var json = false

    package init(workers: Int, seconds: Double, restarts: Int, clients: Int, json: Bool) {
        self.workers = workers
        self.seconds = seconds
        self.restarts = restarts
        self.clients = clients
        self.json = json
    }
}

package struct DemoFigures {
    package static let schema = "portreuse.demo/1"

    package struct Rebind {
        package var rebound: Bool
        package var error: PortReuseError?
    }

    package struct Pain {
        package var port: UInt16
        package var timeWait: Int
        package var exclusive: Rebind
        package var restartablePort: UInt16
        package var restartable: Rebind
    }

    package struct Sharing {
        package var port: UInt16
        package var load: DemoLoad.Figures
        package var workers: [(name: String, pid: Int32, connections: Int)]
        package var maxOverMin: Double
        package var whoText: String
        /// Whether two copies of a program that sets no reuse option shared a port under `portreuse run`
        /// through the kernel; `nil` where seccomp is refused.
        package var unchangedShared: Bool?
    }

    package struct Restarts {
        package var style: String
        package var load: DemoLoad.Figures
        package var restarts: Int
        package var failedRestarts: Int
        /// up: SIGHUP to the new generation ready; naive: the old one stopped to the new one ready.
        package var milliseconds: [Double]
        /// The processes that answered (up: each generation's workers; naive: one per start).
        package var servedBy: Int
        /// up: how many of the generations' own binds got up's socket (the seccomp path); `nil` when the
        /// generations took it as LISTEN_FDS (seccomp refused here), and for the naive restarts.
        package var swappedBinds: Int?
    }

    package var pain: Pain
    package var sharing: Sharing
    package var up: Restarts
    package var naive: Restarts
    package var elapsed: Double

    package var passed: Bool { up.load.failed == 0 && up.failedRestarts == 0 && up.load.succeeded > 0 }

    package func json(options: DemoOptions) -> JSON {
        func number(_ value: Int) -> JSON { .number(Int64(value)) }
        func rebind(_ value: Rebind) -> JSON {
            .object([
                ("rebound", .bool(value.rebound)), ("errno", .optional(value.error?.errno?.symbol, JSON.string)),
                ("error", .optional(value.error?.description, JSON.string)),
            ])
        }
        func errors(_ load: DemoLoad.Figures) -> JSON { .object(load.errors.sorted { $0.key < $1.key }.map { ($0.key, number($0.value)) }) }
        /// `up`'s restarts also say how its reloads went and which generations served; naive ones have neither.
        func restarts(_ value: Restarts, timesKey: String, throughUp: Bool) -> JSON {
            .object([
                ("sent", number(value.load.sent)), ("failed", number(value.load.failed)), ("errors", errors(value.load)),
                ("restarts", number(value.restarts)),
                (timesKey, .array(value.milliseconds.map { number(Int($0.rounded())) })),
            ] + (throughUp ? [
                ("reloadsFailed", number(value.failedRestarts)), ("servedBy", number(value.servedBy)),
                ("swappedBinds", .optional(value.swappedBinds, number)),
            ] : []))
        }
        return .object([
            ("schema", .string(DemoFigures.schema)), ("workers", number(options.workers)), ("loadMilliseconds", number(Int((options.seconds * 1000).rounded()))),
            ("restarts", number(options.restarts)), ("clients", number(options.clients)),
            ("elapsedSeconds", .number(Int64(elapsed.rounded()))), ("passed", .bool(passed)),
            ("pain", .object([
                ("port", number(Int(pain.port))), ("timeWait", number(pain.timeWait)),
                ("exclusive", rebind(pain.exclusive)), ("restartable", rebind(pain.restartable)),
            ])),
            ("sharing", .object([
                ("port", number(Int(sharing.port))), ("sent", number(sharing.load.sent)), ("failed", number(sharing.load.failed)),
                ("workers", .array(sharing.workers.map {
                    .object([("name", .string($0.name)), ("pid", number(Int($0.pid))), ("connections", number($0.connections))])
                })),
                ("maxOverMin", number(sharing.maxOverMin.isFinite ? Int((sharing.maxOverMin * 1000).rounded()) : 0)),
                ("unchangedProgramsShared", .optional(sharing.unchangedShared, JSON.bool)),
            ])),
            ("zeroDowntime", .object([
                ("up", restarts(up, timesKey: "reloadMilliseconds", throughUp: true)),
                ("naive", restarts(naive, timesKey: "downMilliseconds", throughUp: false)),
            ])),
        ])
    }
}
