extension SharingTable {
    /// Whether this system's kernel lets a new socket bind beside `holder`: the rule that `bind` applies
    /// between two sockets on the same port whose addresses overlap (the same address, or a wildcard).
    ///
    /// - Parameters:
    ///   - options: the reuse options the new socket sets before `bind`.
    ///   - uid: the user that creates the new socket; `nil` for a user that owns none of the sockets involved.
    ///   - holder: a socket that holds the port: listening, bound, connected or in TIME-WAIT.
    /// - Returns: `nil` when the answer depends on options of `holder` that are unknown
    ///   (``PortHolder/options`` is `nil` and the options would change the answer).
    ///
    /// Linux (measured, see DESIGN.md; `inet_bind_conflict` and `udp_lib_lport_inuse` in the kernel):
    /// - TCP: `SO_REUSEPORT` on both and the same uid, or, when `holder` does not listen, `SO_REUSEADDR` on both.
    ///   Against TIME-WAIT: `SO_REUSEADDR` on both, or `SO_REUSEPORT` on both (any uid); the TIME-WAIT socket
    ///   keeps the options of the socket that made it.
    /// - UDP: `SO_REUSEADDR` on both (**any uid**: the hijack), or `SO_REUSEPORT` on both and the same uid.
    ///
    /// macOS/BSD (documented, not measured here): `SO_REUSEPORT` on both and the same uid, or another user when
    /// both bind the wildcard address; `SO_REUSEADDR` on the new socket rebinds over TIME-WAIT; a TCP socket that
    /// does not listen admits a new one with `SO_REUSEADDR` on both.
    ///
    /// Windows (documented, not measured here): a holder with `SO_EXCLUSIVEADDRUSE` admits nobody; otherwise
    /// `SO_REUSEADDR` on the new socket binds beside it, for any user; TIME-WAIT never blocks.
    public func admits(_ options: ReuseOptions, uid: UInt32?, beside holder: PortHolder) -> Bool? {
        if let known = holder.options { return rule(options, uid: uid, holder: holder, holderOptions: known) }
        // The holder's options are unknown: the answer is known when every possibility gives the same one.
        let possible: [ReuseOptions] = system == .windows
            ? [[], [.reuseAddress], [.exclusiveAddressUse]]
            : [[], [.reuseAddress], [.reusePort], [.reuseAddress, .reusePort]]
        let answers = Set(possible.map { rule(options, uid: uid, holder: holder, holderOptions: $0) })
        return answers.count == 1 ? answers.first : nil
    }

    private func rule(_ options: ReuseOptions, uid: UInt32?, holder: PortHolder, holderOptions: ReuseOptions) -> Bool {
        let both = options.intersection(holderOptions)
        let sameUser = uid != nil && uid == holder.uid
        switch system {
        case .linux:
            if holder.state == .timeWait { return !both.isEmpty }
            switch holder.transport {
            case .tcp:
                return (both.contains(.reusePort) && sameUser) || (both.contains(.reuseAddress) && holder.state != .listen)
            case .udp:
                return both.contains(.reuseAddress) || (both.contains(.reusePort) && sameUser)
            }
        case .darwin:
            if holder.state == .timeWait { return options.contains(.reuseAddress) || both.contains(.reusePort) }
            if both.contains(.reusePort) && (sameUser || holder.localAddress.ip.isUnspecified) { return true }
            return holder.transport == .tcp && holder.state != .listen && both.contains(.reuseAddress)
        case .windows:
            if holder.state == .timeWait { return true }
            if holderOptions.contains(.exclusiveAddressUse) || options.contains(.exclusiveAddressUse) { return false }
            return options.contains(.reuseAddress)
        }
    }
}
