//go:build race

package e2e

// raceEnabled builds the fleetd under test with -race too, so a data race in
// the real process fails the test (the race detector exits 66).
const raceEnabled = true
