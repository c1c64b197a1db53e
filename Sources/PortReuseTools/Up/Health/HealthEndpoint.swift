import PortReuse
import PortReuseSystem

/// The answers of `--health`, apart from HTTP's bytes: `/readyz`, `/livez`, `/metrics`; 405 for any method but
/// GET and HEAD (whatever the path: `OPTIONS *` and `CONNECT` too), 404 for any other path.
package enum HealthEndpoint {
    package struct Response: Sendable, Equatable {
        package var status: Int
        package var contentType = "text/plain; charset=utf-8"
        package var body: String
        /// For a 405: the methods that would do.
        package var allow: String?

        package init(status: Int, contentType: String = "text/plain; charset=utf-8", body: String, allow: String? = nil) {
            self.status = status
            self.contentType = contentType
            self.body = body
            self.allow = allow
        }
    }

    package static let metricsContentType = "text/plain; version=0.0.4; charset=utf-8"

    /// The answer to `method` on `target` (a path, with or without a query), from `board`. `/metrics` reads the
    /// kernel's tables, so it costs what `portreuse who --all` costs; the other paths only read the snapshot.
    package static func respond(method: String, target: String, board: HealthBoard, now: UInt64 = Processes.monotonicNanoseconds) -> Response {
        guard method == "GET" || method == "HEAD" else {
            return Response(status: 405, body: "method \(method.prefix(20)) not allowed: use GET or HEAD\n", allow: "GET, HEAD")
        }
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? target
        guard ["/readyz", "/livez", "/metrics"].contains(path) else {
            return Response(status: 404, body: "not found: \(path.prefix(100)); try /readyz, /livez or /metrics\n")
        }
        let snapshot = board.snapshot
        switch path {
        case "/readyz":
            let (ready, reason) = snapshot.readiness
            return Response(status: ready ? 200 : 503, body: reason + "\n")
        case "/livez":
            let (live, reason) = snapshot.liveness(now: now)
            return Response(status: live ? 200 : 503, body: reason + "\n")
        default:
            var kernel = KernelReadings.read(generations: snapshot.generations, listeners: snapshot.listeners)
            let since = { (now: UInt64?, start: UInt64?) in now.map { $0 - min($0, start ?? 0) } }
            kernel.listenOverflows = since(kernel.listenOverflows, board.listenBaseline.overflows)
            kernel.listenDrops = since(kernel.listenDrops, board.listenBaseline.drops)
            return Response(status: 200, contentType: metricsContentType, body: Metrics.render(snapshot, listeners: snapshot.listeners, kernel: kernel))
        }
    }
}
