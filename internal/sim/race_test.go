//go:build race

package sim

// raceOn: the race detector slows a scenario about sixfold; the default
// sweeps shrink to keep make test under two minutes.
const raceOn = true
