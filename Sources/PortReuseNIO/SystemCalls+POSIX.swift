#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

#if canImport(Glibc) || canImport(Darwin)
/// The few C calls PortReuseNIO makes itself, under one name per platform (the socket work lives in PortReuse).
enum SystemCalls {
    static let maximumBacklog: Int32 = SOMAXCONN

    static func listen(_ descriptor: Int32, _ backlog: Int32) -> Int32 {
        #if canImport(Glibc)
        Glibc.listen(descriptor, backlog)
        #else
        Darwin.listen(descriptor, backlog)
        #endif
    }

    static func lastError() -> Int32 { errno }
}
#endif
