#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif os(Windows)
import WinSDK
#endif

extension Sys {
    /// The IP addresses of a `getaddrinfo` list (`addrinfo` on POSIX, `ADDRINFOA` on Windows), in its order:
    /// `read` gives one node's address, the address's length and the next node. Each platform's `resolve` calls it.
    static func addresses<Node>(
        of list: UnsafeMutablePointer<Node>?, _ read: (Node) -> (address: UnsafeMutablePointer<sockaddr>?, length: Int, next: UnsafeMutablePointer<Node>?)
    ) -> [IPAddress] {
        var found: [IPAddress] = []
        var node = list
        while let current = node {
            let (address, length, next) = read(current.pointee)
            if let address {
                var storage = sockaddr_storage()
                withUnsafeMutableBytes(of: &storage) {
                    $0.copyMemory(from: UnsafeRawBufferPointer(start: address, count: min(length, MemoryLayout<sockaddr_storage>.size)))
                }
                if let socketAddress = readSockAddr(storage) { found.append(socketAddress.ip) }
            }
            node = next
        }
        return found
    }
}
