/// A file descriptor: a small value type, so that a descriptor is never passed where a pid, a signal or a count
/// is meant (and the other way round). A copy does not own anything: closing is its holder's business
/// (``Files/close(_:)``). A function that takes the number of a descriptor in another process says so.
///
/// swift-system's `FileDescriptor` is the model; it is not `Sendable`, which the supervisor's records and
/// actions must be. It encodes as its number, so the JSON of the records that hold descriptors (the status
/// file, the upgrade's hand-over) reads as before.
package struct Descriptor: RawRepresentable, Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    /// The number the kernel gave it.
    package var rawValue: Int32

    package init(rawValue: Int32) { self.rawValue = rawValue }
    package init(_ rawValue: Int32) { self.rawValue = rawValue }

    /// The descriptor a number in text names (an entry of /proc/PID/fd), or `nil`.
    package init?(_ text: String) {
        guard let number = Int32(text), number >= 0 else { return nil }
        rawValue = number
    }

    /// A number that names nothing (-1), where a slot must keep its place.
    package static let invalid = Descriptor(-1)
    package static let standardInput = Descriptor(0)
    package static let standardOutput = Descriptor(1)
    package static let standardError = Descriptor(2)

    /// Whether it is one of the three standard streams.
    package var isStandardStream: Bool { (0...2).contains(rawValue) }

    /// The number, as `fd 5` in a log line shows it.
    package var description: String { "\(rawValue)" }

    package static func < (left: Descriptor, right: Descriptor) -> Bool { left.rawValue < right.rawValue }
}
