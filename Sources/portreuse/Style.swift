#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Colours and emphasis for text on a terminal: only when standard output is a terminal, `NO_COLOR` is
/// unset or empty (https://no-color.org) and `TERM` is not `dumb`; otherwise every function returns its
/// text unchanged, so that pipes and files get plain text.
struct Style {
    let enabled: Bool

    /// The style for standard output.
    static let standardOutput = Style(enabled: isatty(1) == 1 && Style.environmentAllowsColour)

    static var environmentAllowsColour: Bool {
        let noColour = getenv("NO_COLOR").map { String(cString: $0) } ?? ""
        let term = getenv("TERM").map { String(cString: $0) } ?? ""
        return noColour.isEmpty && term != "dumb"
    }

    private func wrap(_ code: String, _ text: String) -> String { enabled ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text }

    func bold(_ text: String) -> String { wrap("1", text) }
    func dim(_ text: String) -> String { wrap("2", text) }
    func red(_ text: String) -> String { wrap("1;31", text) }
    func green(_ text: String) -> String { wrap("32", text) }
    func yellow(_ text: String) -> String { wrap("33", text) }
}

/// Writes a line to standard error.
func printError(_ text: String) {
    let bytes = Array((text + "\n").utf8)
    var written = 0
    while written < bytes.count {
        let count = bytes[written...].withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        guard count > 0 else { return }
        written += count
    }
}
