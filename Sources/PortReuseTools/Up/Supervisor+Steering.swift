import PortReuse
import SystemPackage
import PortReuseSystem

/// Steered generations (Steering.swift): each generation's own sockets, the program that steers the groups,
/// the quiet drain of a generation out of rotation, and the sockets retired once nobody uses them.
extension Supervisor {
    /// Starts steering the held sockets that can join a group of siblings (SO_REUSEPORT set: up opens its own
    /// that way; systemd's only with `ReusePort=yes`); says once which cannot, and why.
    func startSteering() {
        guard configuration.steers, groups.isEmpty else { return }
        var classic = Environment.value("PORTREUSE_UP_STEERING") == "classic"
        if classic { logger.info("PORTREUSE_UP_STEERING=classic: steered by classic BPF; connections queued on a retired socket are reset, not moved") }
        for (index, socket) in sockets.enumerated() {
            if socket.address != nil, ListenerState.reusesPort(socket.descriptor) {
                groups[index] = ReuseportGroup(members: [socket.descriptor])
                if socket.openedByUp { steeredDescriptors.insert(socket.descriptor) }  // not systemd's
                guard !classic else { continue }
                let (made, code) = SteeringMap.make()
                if var map = made, map.add(socket.descriptor) == 0 {
                    steeringMaps[index] = map
                } else {
                    if let map = made { Files.close(map.descriptor) }
                    classic = true
                    logger.info("no eBPF steering (\(code == 0 ? Errno.current : Errno(rawValue: code)); it needs CAP_BPF): steered by classic BPF; connections queued on a retired socket are reset, not moved")
                }
            } else if socket.address == nil {
                logger.info(.init(stringLiteral: "\(ListenSpec.label(name: socket.name, socket.label)): every generation shares a Unix-domain socket (no reuseport group "
                    + "steers one), so an old generation takes connections from its queue until it stops: a program whose stop drops what it accepted "
                    + "loses requests there at a reload"))
            } else {
                logger.info(.init(stringLiteral: "\(socket.name) \(socket.endpoint) has no SO_REUSEPORT (a socket from systemd needs ReusePort=yes in its .socket unit): "
                    + "every generation shares it, and an old generation takes \(socket.transport == .tcp ? "connections" : "datagrams") from its queue until it stops"))
            }
        }
    }

    /// The descriptors generation-to-be gets, one per held socket (with `--workers`, one set per worker, worker by
    /// worker): the held one where nothing is steered (a socket without SO_REUSEPORT); where it is steered, a new
    /// socket of its own when another generation serves (a reload), else the socket traffic goes to now, with
    /// whatever waits in its queue (a restart after a crash).
    func socketsForNewGeneration(number: Int) -> [Descriptor] {
        let anotherServes = generations.contains { $0.phase == .ready }
        var descriptors: [Descriptor] = []
        for worker in 0..<configuration.workers {
            var set = sockets.map(\.descriptor)
            for index in groups.keys.sorted() {
                let targets = servingTargets[index] ?? [sockets[index].descriptor]
                let current = targets.indices.contains(worker) ? targets[worker] : nil
                if !anotherServes, let current, ListenerState.isInGroup(current, sockets[index].transport) {
                    set[index] = current
                    continue
                }
                // A spare (Supervisor+Steering's retireUnusedSockets) is a member already: its slot never moved a target.
                if let spare = spares[index]?.popLast() {
                    set[index] = spare
                    continue
                }
                do {
                    set[index] = try openSibling(index)
                } catch {
                    logger.warning(.init(stringLiteral: "generation \(number)\(worker > 0 ? " worker \(worker)" : "") shares \(sockets[index].name) \(sockets[index].endpoint) "
                        + "with the serving generation: a socket of its own could not be opened (\(error))"))
                }
            }
            descriptors += set
        }
        return descriptors
    }

    /// A new listening socket on held socket `index`'s address, in its group (it joins at the end), kept by `up`
    /// at a high descriptor number.
    private func openSibling(_ index: Int) throws -> Descriptor {
        let template = sockets[index]
        guard let address = template.address else { throw CommandFailure("\(template.label) is not steered") }
        let dualStack = HeldSocket.isDualStack(template.descriptor, address)
        let made = switch template.transport {
        case .tcp: try Listener(address: address, policy: .shared, backlog: template.backlog ?? Sys.defaultBacklog, dualStack: dualStack).takeDescriptor()
        case .udp: try DatagramSocket(address: address, policy: .shared, dualStack: dualStack).takeDescriptor()
        }
        guard let fresh = made.map(Descriptor.init(_:)) else { throw CommandFailure("the new socket is gone") }
        defer { Files.close(fresh) }
        let moved: Descriptor
        do { moved = try Files.duplicate(fresh, atLeast: try HeldSocket.firstDescriptor(holding: sockets.count)) } catch let error as SystemError {
            throw CommandFailure(error.errno.description)
        }
        if configuration.dialect.nonBlockingSockets, template.transport == .tcp { Files.setNonBlocking(moved, true) }
        groups[index]?.join(moved)
        steeredDescriptors.insert(moved)
        if let code = steeringMaps[index]?.add(moved), code != 0 {
            logger.warning("\(template.endpoint): a socket could not join up's eBPF map (\(Errno(rawValue: code))): back to classic BPF for it")
            dropSteeringMap(index)
        }
        return moved
    }

    /// Points each group's program at the serving generation's sockets (the newest ready one, else the newest
    /// starting one; with `--workers`, one per worker, picked by the connection's hash), and the probe's source
    /// port at the starting generation's socket while one starts beside a serving one. Runs after every change of
    /// phase or membership; attaches only a program that changed.
    func steer() {
        guard !groups.isEmpty else { return }
        let own = generations.filter { $0.sockets != nil }
        guard let serving = own.last(where: { $0.phase == .ready }) ?? own.last(where: { $0.phase == .starting }),
            let servingSockets = serving.sockets
        else { return }
        let starting = generations.last { $0.phase == .starting && $0.number != serving.number }
        for (index, group) in groups {
            let targets = Self.perWorker(servingSockets, index: index, held: sockets.count)
            let target = targets[0]
            let theirs = starting?.sockets?[index]
            let probing = sockets[index].transport == .tcp && theirs != nil && !targets.contains(theirs!)
            if let map = steeringMaps[index] {
                let keys = targets.compactMap { map.keys[$0] }
                if keys.count == targets.count {
                    var choice = SteeringMap.Choice(serving: keys)
                    if probing, let probeKey = map.keys[theirs!], let source = probeSource(for: index) { choice.probe = (source.ports, probeKey) }
                    if attachedChoices[index] != choice {
                        let (code, log) = map.attach(choice, to: target)
                        if code == 0 {
                            attachedChoices[index] = choice
                        } else {
                            // Classic BPF steers on: only a queue left on a retired socket is no longer moved.
                            logger.warning(.init(stringLiteral: "cannot attach up's eBPF program to \(sockets[index].endpoint) (\(Errno(rawValue: code))"
                                + (log.isEmpty ? "" : ": \(log.split(separator: "\n").suffix(2).joined(separator: " "))") + "): back to classic BPF"))
                            dropSteeringMap(index)
                        }
                    }
                }
            }
            let servingIndices = targets.compactMap { group.index(of: $0) }
            guard servingIndices.count == targets.count else { continue }
            var probe: (ports: [UInt16], index: UInt32)?
            if probing, let probeIndex = group.index(of: theirs!), let source = probeSource(for: index) { probe = (source.ports, probeIndex) }
            let program = SteeringProgram.instructions(serving: servingIndices, probe: probe)
            if steeringMaps[index] == nil, attachedPrograms[index] != program {
                let code = SteeringProgram.attach(program, to: target)
                if code == 0 {
                    attachedPrograms[index] = program
                } else {
                    logger.error(.init(stringLiteral: "cannot steer \(sockets[index].name) \(sockets[index].endpoint) (SO_ATTACH_REUSEPORT_CBPF: \(Errno(rawValue: code))): "
                        + "the kernel spreads its connections over every generation's socket"))
                }
            }
            servingTargets[index] = targets
            if sockets[index].descriptor != target {
                sockets[index].descriptor = target
                sockets[index].inode = GenerationProbe.inode(of: target)
            }
        }
    }

    /// The descriptors of held socket `index` in a generation's `own` sockets, one per worker (they are worker by
    /// worker, `held` each).
    static func perWorker(_ own: [Descriptor], index: Int, held: Int) -> [Descriptor] {
        Array(stride(from: index, to: own.count, by: held).map { own[$0] })
    }

    /// The reserved source of up's probes to held socket `index`, made at its first use.
    func probeSource(for index: Int) -> ProbeSource? {
        if let made = probeSources[index] { return made }  // nil inside: tried, failed, said
        do {
            guard let address = sockets[index].address else { throw CommandFailure("not an IP socket") }
            let source = try ProbeSource(for: address)
            probeSources[index] = source
            return source
        } catch {
            logger.warning("no port for up's readiness probe to \(sockets[index].endpoint) (\(error)): a starting generation is ready once it waits on its socket")
            probeSources[index] = .some(nil)
            return nil
        }
    }

    /// The steered sockets of `generation` (its own, in groups), by held index (every worker's, worker by worker).
    func steeredSockets(of generation: GenerationRecord) -> [(index: Int, descriptor: Descriptor)] {
        guard let own = generation.sockets, !sockets.isEmpty else { return [] }
        return own.indices.compactMap { position in
            let index = position % sockets.count
            return groups[index]?.members.contains(own[position]) == true ? (index, own[position]) : nil
        }
    }

    /// Carries out ``UpMachine/Action/takeOutOfRotation(_:)``: the program may have shortened its socket's queue
    /// (Python's listen(5)), so up's length again, so that a connection whose handshake began before the cutover is not
    /// dropped on a full queue and left to retry; and the counters its drain reads.
    func takeOutOfRotation(_ number: Int) {
        guard let generation = generation(number) else { return }
        // Whether a handshake may have been dropped on a full queue before the switch-over (and so be retried on the
        // old socket after it): only then is the kernel's table walked before the old one stops.
        let report = record.history.last.flatMap { $0.generation == generations.last(where: { $0.phase == .ready })?.number ? $0 : nil }
        resources[number]?.stragglers = (dropsAtCut: KernelReadings.listenCounters().drops, dropsBefore: report?.listenDrops.map { $0 > 0 } ?? true)
        for (index, descriptor) in steeredSockets(of: generation) where sockets[index].transport == .tcp {
            _ = Sys.listen(descriptor.rawValue, sockets[index].backlog ?? Sys.defaultBacklog)
        }
    }

    /// Carries out ``UpMachine/Action/lookQuiet(_:)``: what keeps a generation out of rotation busy, in words; nil
    /// when it is idle. The cheap look first: its queue (TCP_INFO); then the connections its processes hold (a pass
    /// over their descriptors); last, once it looks idle, a handshake not yet complete on the port (its ACK dropped
    /// on a full queue, to be retried: it may still land on the old socket; a walk of the kernel's table, TIME-WAIT
    /// sockets included). Under a flood that keeps handshakes pending, the limit decides.
    func busyness(of generation: GenerationRecord) -> String? {
        if let waiting = steeredSockets(of: generation).lazy.compactMap({ ListenerState.waiting($0.descriptor, self.sockets[$0.index].transport) }).first {
            return "had \(waiting)"
        }
        let held = connections(of: generation)
        if held > 0 { return "held \(held) connection(s)" }
        return handshakesPending(for: generation) ? "had a handshake pending on its port" : nil
    }

    /// Whether any connection to the ports of the generation's steered sockets is still in its handshake
    /// (SYN-RECV: the kernel does not say on which listener of the group). On loopback a handshake completes at
    /// once unless a full queue dropped its last ACK, which the namespace's ListenDrops counts: while it has not
    /// moved since before the switch-over, none can be pending, and the kernel's table (every TIME-WAIT socket of
    /// the namespace: tens of milliseconds under load) is not walked.
    private func handshakesPending(for generation: GenerationRecord) -> Bool {
        if let (atCut, before) = resources[generation.number]?.stragglers, !before, let atCut, KernelReadings.listenCounters().drops == atCut { return false }
        return steeredSockets(of: generation).contains { socket in
            guard let address = sockets[socket.index].address, sockets[socket.index].transport == .tcp else { return false }
            return !PortHolder.find(port: address.port, transport: .tcp, states: [.synReceived], family: address.family, processes: false, options: false).isEmpty
        }
    }

    /// The connections accepted on up's listeners that the processes of `generation` hold.
    func connections(of generation: GenerationRecord) -> Int {
        KernelReadings.connections(of: [generation.view], listeners: HealthListener.of(sockets), tree: processTree()).values.reduce(0, +)
    }

    /// Carries out ``UpMachine/Action/lookAtSteeredSockets``: a generation whose own socket stopped listening (it
    /// called `shutdown()` on it) left the group at that moment; the model follows, and the machine hears of it.
    func lookAtSteeredSockets() -> [UpMachine.Event] {
        var events: [UpMachine.Event] = []
        for generation in generations where generation.exit == nil {
            let dead = steeredSockets(of: generation).filter { !ListenerState.isInGroup($0.descriptor, sockets[$0.index].transport) }
            guard !dead.isEmpty else { continue }
            for (index, descriptor) in dead {
                groups[index]?.leave(descriptor)
                steeringMaps[index]?.remove(descriptor)
            }
            events.append(.socketsStopped(number: generation.number, names: dead.map { "\(sockets[$0.index].name) \(sockets[$0.index].endpoint)" }.joined(separator: ", ")))
        }
        return events
    }

    /// Shuts down and closes the steered sockets no generation uses any more and traffic does not go to: a
    /// socket that stays open in a detached helper of a stopped generation then stops listening too, and leaves
    /// its group. A socket from systemd is only closed: systemd keeps it, so it stays in the group, where its
    /// index is kept (``ReuseportGroup/forget(_:)``) and nothing is steered to it.
    ///
    /// A socket that leaves moves the group's last one into its slot, and until the program is attached again the
    /// kernel would spread connections by its hash over every member, old ones included. So the last one must never
    /// be a socket traffic or the probe goes to: where it is, a spare joins first (and is the last that moves), which
    /// the next generation gets as its socket. The program then stays right throughout.
    /// `generation`: the generation that just went, whose sockets these likely were (for the reload report).
    func retireUnusedSockets(after generation: Int? = nil) -> [UpMachine.Event] {
        guard !groups.isEmpty else { return [] }
        let used = Set(generations.flatMap { $0.sockets ?? [] } + sockets.map(\.descriptor) + spares.values.flatMap { $0 })
        let targets = Set(generations.filter { $0.phase == .ready || $0.phase == .starting }.flatMap { $0.sockets ?? [] } + sockets.map(\.descriptor))
        var changed = false
        var reset = 0
        for descriptor in steeredDescriptors.union(groups.values.flatMap(\.members)) where descriptor != .invalid && !used.contains(descriptor) {
            guard let index = groups.keys.first(where: { groups[$0]!.members.contains(descriptor) }) else {
                steeredDescriptors.remove(descriptor)
                Files.close(descriptor)
                continue
            }
            let transport = sockets[index].transport
            let ours = steeredDescriptors.contains(descriptor)
            // A UDP socket leaves its group only when its last descriptor closes: one that a process outside up still
            // holds keeps its slot, and up keeps its own descriptor (and so the model) until that process lets go.
            if ours, transport == .udp, heldElsewhere(descriptor) { continue }
            steeredDescriptors.remove(descriptor)
            if ours, let waiting = ListenerState.waiting(descriptor, transport) {
                // Its generation is gone without taking them (it hung, or --drain-timeout ran out).
                let migrates = transport == .tcp && steeringMaps[index] != nil
                if transport == .tcp && !migrates { reset += ListenerState.queued(descriptor) }
                let fate = migrates ? "moved to the serving generation's socket (eBPF)" : transport == .tcp ? "reset by the kernel" : "dropped"
                logger.warning("\(waiting) on a retired generation's socket: \(fate) (its generation went without taking them)")
            }
            steeringMaps[index]?.remove(descriptor)
            if ours {
                // The classic program picks by index: the last member must never be one traffic goes to (see above).
                if steeringMaps[index] == nil, let last = groups[index]!.members.last, last != descriptor, targets.contains(last) {
                    do { spares[index, default: []].append(try openSibling(index)) } catch {
                        logger.warning("no spare socket for \(sockets[index].endpoint) (\(error)): new connections may be spread by the kernel's hash for a moment")
                    }
                }
                // A TCP listener leaves its group at once, whoever else holds it (a helper left behind).
                if transport == .tcp { SocketReadings.shutDown(descriptor) }
                groups[index]?.leave(descriptor)
            } else {
                groups[index]?.forget(descriptor)
            }
            Files.close(descriptor)
            changed = true
        }
        if changed {
            #if os(Linux)
            swaps = swaps.filter { used.isSuperset(of: $0.key) }
            #endif
            steer()
        }
        return reset > 0 ? [.queuedResetAtRetire(reset, generation: generation)] : []
    }

    /// Classic BPF for group `index` from now on: where eBPF failed for it.
    private func dropSteeringMap(_ index: Int) {
        guard let map = steeringMaps.removeValue(forKey: index) else { return }
        Files.close(map.descriptor)
        attachedChoices[index] = nil
        attachedPrograms[index] = nil
    }

    /// Whether a process other than `up` holds the socket `descriptor` names.
    private func heldElsewhere(_ descriptor: Descriptor) -> Bool {
        let inode = GenerationProbe.inode(of: descriptor)
        let me = Processes.currentID
        return processTree().all.contains { $0.pid != me && Processes.socketInodes(of: $0.pid).contains(inode) }
    }

    /// Every process that holds one of the generation's own sockets belongs to it, whatever its parent (a helper
    /// that detached with setsid or a double fork): it is killed with the generation's process group when the grace
    /// runs out. A socket another live generation shares (a crashed one's, given to its replacement), or one from
    /// systemd, names nobody.
    func socketHolders(of generation: GenerationRecord, in tree: Processes.Tree) -> [GenerationRecord.Member] {
        let others = Set(generations.filter { $0.number != generation.number && $0.exit == nil }.flatMap { $0.sockets ?? [] })
        // Only sockets up opened: systemd keeps its own, and is no member of anything.
        let inodes = Set(steeredSockets(of: generation).map(\.descriptor).filter { !others.contains($0) && steeredDescriptors.contains($0) }.map(GenerationProbe.inode(of:)))
        guard !inodes.isEmpty else { return [] }
        let known = Set(generation.members.map(\.pid) + [generation.pid, Processes.currentID])
        // A process the generation made started after its first one: older ones are not read (a pass over every
        // process's descriptors is the dearest look of a reload).
        let since = tree.all.first { $0.pid == generation.pid }?.startTime ?? generation.members.map(\.startTime).min() ?? 0
        return tree.all.filter { $0.startTime >= since && !known.contains($0.pid) && !Processes.socketInodes(of: $0.pid).isDisjoint(with: inodes) }
            .map { GenerationRecord.Member(pid: $0.pid, startTime: $0.startTime) }
    }

    /// At up's exit: its own steered sockets stop listening, so that no process left behind keeps the port.
    func shutDownSteeredSockets() {
        for descriptor in steeredDescriptors { SocketReadings.shutDown(descriptor) }
    }
}
