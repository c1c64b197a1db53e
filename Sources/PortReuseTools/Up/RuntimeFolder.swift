import PortReuse
import PortReuseSystem

/// `up`'s private folder (`$TMPDIR/portreuse-up.XXXXXX`, mode 0700): the generations' notify sockets and the
/// upgrade hand-over. `up` holds an exclusive `flock` on its `owner` file (which names its pid, for people) for
/// its whole life, across its in-place upgrades (the descriptor is inherited by exec): a folder whose lock can
/// be taken belongs to an `up` that is gone, whatever pid namespace either runs in (a pid alone would not say:
/// an `up` that is PID 1 of a container sees other pids than the host's), and the next `up` removes it.
package enum RuntimeFolder {
    static let prefix = "portreuse-up."
    static let ownerFile = "owner"

    /// Where the folders go: $TMPDIR, else /tmp.
    static var base: String { Environment.value("TMPDIR") ?? "/tmp" }

    /// A new folder owned by this process (the stale folders of this user's killed `up`s are removed first).
    package static func make() throws(CommandFailure) -> String {
        // Another user who may replace the folder could swap it for a link to a folder of theirs.
        if let reason = Files.unsafeFolderReason(base) {
            throw CommandFailure("cannot keep up's private folder in \(base) (TMPDIR): \(reason); set TMPDIR to a folder of your own, or leave it unset for /tmp",
                                 exitCode: 3)
        }
        sweep()
        for _ in 0..<4 {
            let folder: String
            do { folder = try Files.makeTemporaryFolder(in: base, prefix: prefix) } catch {
                throw CommandFailure("cannot create a private folder in \(base) for the notify sockets: \(error.errno.description)")
            }
            // Not close-on-exec: the lock lives as long as this up, its in-place upgrades included. Generations do
            // not inherit it (a spawn closes every descriptor it does not hand over).
            // Failing: another up's sweep took the folder while it was empty: again.
            guard let owner = try? Files.open(folder + "/" + ownerFile, .creatingNew, permissions: 0o600, inherited: true) else { continue }
            // Blocking: a sweep that opened the new file first holds the lock a moment, sees it empty, lets go.
            Files.lock(owner, waiting: true)
            try? Files.write(Array("\(Processes.currentID)\n".utf8), to: owner)
            return folder
        }
        throw CommandFailure("cannot create a private folder in \(base) for the notify sockets: it vanished four times")
    }

    /// Removes `folder` at `up`'s exit: its owner file, then the folder if nothing else is left in it.
    package static func remove(_ folder: String) {
        Files.remove(folder + "/" + ownerFile)
        Files.removeFolder(folder)
    }

    /// Removes the folders in ``base`` that belong to this user and whose owner is not running any more (or, for
    /// a folder without an owner file, that are empty). Returns the folders removed.
    @discardableResult
    package static func sweep() -> [String] {
        var removed: [String] = []
        for name in Files.list(base) where name.hasPrefix(prefix) {
            let folder = base + "/" + name
            guard let info = Files.status(of: folder, following: false), info.kind == .directory, info.owner == Processes.effectiveUserID else { continue }
            guard let owner = try? Files.open(folder + "/" + ownerFile, .readingWithoutFollowing) else {
                if Files.removeFolder(folder) { removed.append(folder) }  // only an empty one
                continue
            }
            defer { Files.close(owner) }
            guard Files.lock(owner, waiting: false) else { continue }  // its up holds it: alive
            guard let written = Files.status(of: owner), written.size > 0 else { continue }  // an up making it right now
            for entry in Files.list(folder) { Files.remove(folder + "/" + entry) }  // unlink never follows a link
            if Files.removeFolder(folder) { removed.append(folder) }
        }
        return removed
    }
}
