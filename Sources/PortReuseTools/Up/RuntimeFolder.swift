import Glibc
import PortReuse

/// `up`'s private folder (`$TMPDIR/portreuse-up.XXXXXX`, mode 0700): the generations' notify sockets and the
/// upgrade hand-over. Its `owner` file names the `up` that made it (pid and start time), so that the folder of
/// an `up` that was killed is recognised as stale and removed by the next `up` of the same user.
package enum RuntimeFolder {
    static let prefix = "portreuse-up."
    static let ownerFile = "owner"

    /// Where the folders go: $TMPDIR, else /tmp.
    static var base: String { getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp" }

    /// A new folder owned by this process (the stale folders of this user's killed `up`s are removed first).
    package static func make() throws(CommandFailure) -> String {
        sweep()
        var template = Array("\(base)/\(prefix)XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else {
            throw CommandFailure("cannot create a private folder in \(base) for the notify sockets: \(Files.errorText())")
        }
        let folder = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let start = Processes.stat(of: getpid())?.startTime ?? 0
        try? Files.replace(folder + "/" + ownerFile, with: Array("\(getpid()) \(start)\n".utf8), mode: 0o600)
        return folder
    }

    /// Removes `folder` at `up`'s exit: its owner file, then the folder if nothing else is left in it.
    package static func remove(_ folder: String) {
        unlink(folder + "/" + ownerFile)
        rmdir(folder)
    }

    /// Removes the folders in ``base`` that belong to this user and whose owner is not running any more (or, for
    /// a folder without an owner file, that are empty). Returns the folders removed.
    @discardableResult
    package static func sweep() -> [String] {
        var removed: [String] = []
        for name in Files.list(base) where name.hasPrefix(prefix) {
            let folder = base + "/" + name
            var info = stat()
            guard lstat(folder, &info) == 0, info.st_mode & S_IFMT == S_IFDIR, info.st_uid == geteuid() else { continue }
            guard let owner = Files.read(folder + "/" + ownerFile, limit: 64) else {
                if rmdir(folder) == 0 { removed.append(folder) }  // only an empty one
                continue
            }
            guard isStale(owner: String(decoding: owner, as: UTF8.self)) else { continue }
            for entry in Files.list(folder) { unlink(folder + "/" + entry) }  // unlink never follows a link
            if rmdir(folder) == 0 { removed.append(folder) }
        }
        return removed
    }

    /// Whether the `pid start-time` line names a process that is not running any more.
    static func isStale(owner line: String) -> Bool {
        let fields = line.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard fields.count == 2, let pid = pid_t(fields[0]), pid > 0, let start = UInt64(fields[1]) else { return false }
        guard let stat = Processes.stat(of: pid), stat.state != "Z" else { return true }
        return stat.startTime != start
    }
}
