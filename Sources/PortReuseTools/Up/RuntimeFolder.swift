import Glibc
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
    static var base: String { getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp" }

    /// A new folder owned by this process (the stale folders of this user's killed `up`s are removed first).
    package static func make() throws(CommandFailure) -> String {
        // Another user who may replace the folder could swap it for a link to a folder of theirs.
        if let reason = Files.unsafeFolderReason(base) {
            throw CommandFailure("cannot keep up's private folder in \(base) (TMPDIR): \(reason); set TMPDIR to a folder of your own, or leave it unset for /tmp",
                                 exitCode: 3)
        }
        sweep()
        for _ in 0..<4 {
            var template = Array("\(base)/\(prefix)XXXXXX".utf8CString)
            guard mkdtemp(&template) != nil else {
                throw CommandFailure("cannot create a private folder in \(base) for the notify sockets: \(Files.errorText())")
            }
            let folder = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
            // Not close-on-exec: the lock lives as long as this up, its in-place upgrades included. Generations do
            // not inherit it (a spawn closes every descriptor it does not hand over).
            let owner = open(folder + "/" + ownerFile, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600)
            guard owner >= 0 else { continue }  // another up's sweep took the folder while it was empty: again
            // Blocking: a sweep that opened the new file first holds the lock a moment, sees it empty, lets go.
            _ = flock(owner, LOCK_EX)
            try? Files.write(Array("\(getpid())\n".utf8), to: owner)
            return folder
        }
        throw CommandFailure("cannot create a private folder in \(base) for the notify sockets: it vanished four times")
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
            let owner = open(folder + "/" + ownerFile, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
            guard owner >= 0 else {
                if rmdir(folder) == 0 { removed.append(folder) }  // only an empty one
                continue
            }
            defer { close(owner) }
            guard flock(owner, LOCK_EX | LOCK_NB) == 0 else { continue }  // its up holds it: alive
            var written = stat()
            guard fstat(owner, &written) == 0, written.st_size > 0 else { continue }  // an up making it right now
            for entry in Files.list(folder) { unlink(folder + "/" + entry) }  // unlink never follows a link
            if rmdir(folder) == 0 { removed.append(folder) }
        }
        return removed
    }
}
