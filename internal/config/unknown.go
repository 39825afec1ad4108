package config

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
)

// variablePrefix starts every variable of fleetd's own.
const variablePrefix = "CELLOS_FLEET_"

// known returns the CELLOS_FLEET_* variables fleetd reads: the settings'
// and UIToken.
func known() []string {
	known := []string{string(UIToken)}
	for _, s := range Settings() {
		if strings.HasPrefix(string(s.Var), variablePrefix) {
			known = append(known, string(s.Var))
		}
	}
	return known
}

// Unknown maps each CELLOS_FLEET_* variable in environ that fleetd does not
// read to the known one closest to it: a misspelt setting would otherwise be
// ignored without a word.
func Unknown(environ []string) map[string]string {
	names := known()
	unknown := map[string]string{}
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, variablePrefix) || slices.Contains(names, name) {
			continue
		}
		best, bestDist := "", math.MaxInt
		for _, k := range names {
			if d := levenshtein(name, k); d < bestDist {
				best, bestDist = k, d
			}
		}
		unknown[name] = best
	}
	return unknown
}

// DescribeUnknown renders Unknown's result as one line, sorted.
func DescribeUnknown(unknown map[string]string) string {
	names := slices.Sorted(maps.Keys(unknown))
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s (did you mean %s?)", n, unknown[n])
	}
	return strings.Join(parts, ", ")
}

// levenshtein is the edit distance between a and b, in bytes.
func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
