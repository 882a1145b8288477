//go:build race

package app

// raceBuild: this test binary has the race detector, so the klectr binary
// the process tests run is built with it too (and its packages are already
// compiled that way).
const raceBuild = true
