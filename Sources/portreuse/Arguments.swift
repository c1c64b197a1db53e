import ArgumentParser
import PortReuse
import PortReuseTools

// The library's vocabulary as command-line arguments: `--policy shared` is `.shared`, and an address
// argument takes every form `Address` parses, failing with the library's error text.

extension SharingPolicy: ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: argument) }
    public static var allValueStrings: [String] { allCases.map(\.rawValue) }
}

extension Address {
    /// For `@Argument(transform: Address.parse)` and `@Option(transform: Address.parse)`: the parse error
    /// (which names the input and lists the accepted forms) is what the user sees.
    static func parse(_ text: String) throws -> Address {
        try Address(text)
    }
}

extension NetworkInterface {
    /// Validates an `--interface` option (a name, an index or an address), with the library's reason.
    static func checkOption(_ interface: String?) throws {
        guard let interface else { return }
        do {
            _ = try NetworkInterface.find(interface)
        } catch {
            throw ValidationError("--interface \(interface): \(error.diagnosis?.sentence ?? error.description)")
        }
    }
}

extension InterceptionMethod: ExpressibleByArgument {}
