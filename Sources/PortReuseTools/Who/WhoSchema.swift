/// The fields of `portreuse who --json` (schema portreuse.who/1), written once: `who --help` and docs/who.md both
/// show them from here (a test checks the page shows exactly ``markdown``, and that the JSON has these fields).
package enum WhoSchema {
    /// A field (or fields that go together, as `uid, user`), what it means (Markdown: `code` in backticks), its own fields.
    package struct Field: Sendable {
        package var names: [String]
        package var meaning: String
        package var fields: [Field]

        init(_ names: String..., meaning: String, fields: [Field] = []) {
            self.names = names
            self.meaning = meaning
            self.fields = fields
        }
    }

    package static let fields: [Field] = [
        Field("schema", meaning: "`\"\(WhoOutput.schema)\"`"),
        Field("query", meaning: "what was asked: `text` (the argument, `null` with `--all`), `all` (bool), `transports` (`[\"tcp\", \"udp\"]`), `port` (`null` with `--all`)"),
        Field("privileged", meaning: "whether `who` ran as root (it then sees every process and every socket's options)"),
        Field("held", meaning: "whether anything holds the port; the exit status is 0 exactly then"),
        Field("hiddenSockets", meaning: "how many listed sockets have processes `who` could not see"),
        Field("notes", meaning: "what is hidden and how to see it, in words"),
        Field("ports", meaning: "one object per transport and port:", fields: [
            Field("transport", "port", meaning: "`\"tcp\"` or `\"udp\"`, and the port number"),
            Field("held", meaning: "whether a socket or a connection holds it"),
            Field("connections", meaning: "TCP connections on the port: `established`, `timeWait`, `other` (every other state)"),
            Field("warnings", meaning: "where another user could take this port's traffic: sockets of several users on it, or a wildcard that leaves the other IP version free"),
            Field("restartableMayBind", meaning: "when only connections hold the port: whether a new listener with `SO_REUSEADDR` (policy `restartable`) can bind now, learned by a TCP probe; else `null`"),
            Field("sockets", meaning: "one object per bound socket:", fields: [
                Field("address", "ip", "family", meaning: "`\"127.0.0.1:8080\"`, `\"127.0.0.1\"`, `\"ipv4\"` (or `\"[::1]:8080\"`, `\"::1\"`, `\"ipv6\"`)"),
                Field("state", meaning: "`\"LISTEN\"`, `\"UNCONN\"`, or `\"ESTAB\"` for a connected UDP socket"),
                Field("inode", meaning: "the kernel's inode number of the socket"),
                Field("dualStack", meaning: "for IPv6: whether it takes IPv4 too (`IPV6_V6ONLY` off); `null` when unreadable or IPv4"),
                Field("uid", "user", meaning: "the socket's owner, the user that created it (which the kernel's sharing rules compare); `user` is `null` for a uid without a name"),
                Field("receiveQueue", meaning: "a listener's connections waiting for `accept`; a UDP socket's bytes waiting to be read"),
                Field("options", meaning: "`[\"SO_REUSEADDR\", \"SO_REUSEPORT\"]` as read from the socket, `[]` for none, `null` when unreadable"),
                Field("connections", meaning: "`established`, `timeWait`, `other` on this socket's address (the sockets of one address share them)"),
                Field("processesHidden", meaning: "whether its processes could not be seen (another user's, without root)"),
                Field("processes", meaning: "each process that holds it: `pid`, `fd`, `name`, `uid`, `user` (the process's own user, which may differ from the socket's), `commandLine` (array of strings)"),
                Field("sharing", meaning: "`sameUserMayJoin` and `otherUsersMayJoin` (bool, `null` when unknown), `hijackable` (bool), `source` (`\"options\"`: read from the sockets, `\"probe\"`, or `\"rules\"`: the kernel's rules alone), `verdict` (words), `group` (`\"multicast\"` or `\"broadcast\"` for a socket bound to such an address, which receives only that address's datagrams and takes nothing from a socket beside it; else `null`)"),
            ]),
        ]),
    ]

    /// The table of docs/who.md.
    package static var markdown: String {
        var rows = ["| field | meaning |", "|---|---|"]
        func add(_ fields: [Field], depth: Int) {
            for field in fields {
                let indent = String(repeating: "&nbsp;&nbsp;", count: depth)
                rows.append("| \(indent)\(field.names.map { "`\($0)`" }.joined(separator: ", ")) | \(field.meaning) |")
                add(field.fields, depth: depth + 1)
            }
        }
        add(fields, depth: 0)
        return rows.joined(separator: "\n")
    }

    /// For `who --help`: the names in a column (nested fields indented), the meanings without Markdown, wrapped at 76
    /// (the argument parser wraps its help again at 80).
    package static var help: String {
        var lines: [String] = []
        let column = 22
        func add(_ fields: [Field], depth: Int) {
            for field in fields {
                let name = String(repeating: "  ", count: depth + 1) + field.names.joined(separator: ", ")
                var line = name.count < column - 1 ? name + String(repeating: " ", count: column - name.count) : name + " "
                var empty = true  // no word on this line yet
                for word in field.meaning.filter({ $0 != "`" }).split(separator: " ") {
                    if !empty && line.count + 1 + word.count > 76 {
                        lines.append(line)
                        line = String(repeating: " ", count: column)
                        empty = true
                    }
                    line += (empty ? "" : " ") + word
                    empty = false
                }
                lines.append(line)
                add(field.fields, depth: depth + 1)
            }
        }
        add(fields, depth: 0)
        return lines.joined(separator: "\n")
    }
}
