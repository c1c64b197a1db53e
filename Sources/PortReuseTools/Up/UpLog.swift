import PortReuse
import Glibc
import Logging

/// One line per event on stderr: `12:00:01.234 portreuse up[812]: generation 2 (pid 4242) ready after 180 ms (notify)`.
/// Warnings and errors say so after the pid; metadata follows as `key=value`.
package struct UpLogHandler: LogHandler {
    package var metadata: Logger.Metadata = [:]
    package var logLevel: Logger.Level = .info

    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    package func log(event: LogEvent) {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        var parts = tm()
        var seconds = time.tv_sec
        localtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let milliseconds = String(1000 + time.tv_nsec / 1_000_000).dropFirst()
        let level = event.level >= .warning ? " \(event.level)" : ""
        let fields = metadata.merging(event.metadata ?? [:]) { $1 }.sorted { $0.key < $1.key }.map { " \($0.key)=\($0.value)" }.joined()
        printError(
            "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(milliseconds) portreuse up[\(getpid())]\(level): \(event.message)\(fields)")
    }
}
