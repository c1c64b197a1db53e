import PortReuse
import PortReuseSystem

/// Colours and emphasis for text on a terminal: only when standard output is a terminal, `NO_COLOR` is
/// unset or empty (https://no-color.org) and `TERM` is not `dumb`; otherwise every function returns its
/// text unchanged, so that pipes and files get plain text.
package struct Style {
    package let enabled: Bool

    /// The style for standard output.
    package static let standardOutput = Style(enabled: Files.isTerminal(.standardOutput) && Style.environmentAllowsColour)

    package static var environmentAllowsColour: Bool {
        let noColour = Environment.value("NO_COLOR") ?? ""
        let term = Environment.value("TERM") ?? ""
        return noColour.isEmpty && term != "dumb"
    }

    private func wrap(_ code: String, _ text: String) -> String { enabled ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text }

    package func bold(_ text: String) -> String { wrap("1", text) }
    package func dim(_ text: String) -> String { wrap("2", text) }
    package func red(_ text: String) -> String { wrap("1;31", text) }
    package func green(_ text: String) -> String { wrap("32", text) }
    package func yellow(_ text: String) -> String { wrap("33", text) }
}

/// Writes `text` (and a newline) to standard error, whole; a closed or failing stderr loses it, nothing else.
package func printError(_ text: String, newline: Bool = true) {
    try? Files.write(Array((newline ? text + "\n" : text).utf8), to: .standardError)
}

extension String {
    /// The string padded with spaces to `width` characters.
    package func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}
