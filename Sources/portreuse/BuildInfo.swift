/// What `portreuse --version` says. `scripts/package` writes this file for a release (the version from the git
/// tag, and the commit) and puts it back after its build; a build from a checkout says it is one.
enum BuildInfo {
    static let version = "0.1.0"
    static let commit = "a checkout, not a release build"
}
