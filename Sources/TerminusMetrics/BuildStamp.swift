// The version and commit compiled into the binary. A source checkout builds with the values
// below; `deploy/stamp-build` rewrites this file inside the image build (`deploy/Dockerfile`,
// run by `deploy/build-image`) with the release's version and the commit it was built from.
enum BuildStamp {
    static let version = "0.1.0-dev"
    static let commit = "unknown"
}
