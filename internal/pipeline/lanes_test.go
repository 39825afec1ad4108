package pipeline

import (
	"testing"
)

func TestSmoothWRRIsDeterministicAndFair(t *testing.T) {
	w := newSmoothWRR([]int{6, 3, 1})
	all := []bool{true, true, true}
	var seq []int
	counts := make([]int, 3)
	for range 20 {
		i := w.next(all)
		seq = append(seq, i)
		counts[i]++
	}
	// nginx's sequence for 6:3:1 (worked by hand: add weights, take the
	// largest, first on a tie, subtract the total) interleaves, no bursts.
	want := []int{0, 1, 0, 0, 1, 0, 2, 0, 1, 0}
	for i, v := range want {
		if seq[i] != v {
			t.Fatalf("first picks %v, want %v", seq[:10], want)
		}
	}
	if counts[0] != 12 || counts[1] != 6 || counts[2] != 2 {
		t.Errorf("20 picks: %v, want 12, 6, 2", counts)
	}
	// Any window of 20 consecutive picks is within 2 of each share.
	w = newSmoothWRR([]int{3, 1})
	var picks []int
	for range 200 {
		picks = append(picks, w.next([]bool{true, true}))
	}
	for s := 0; s+20 <= len(picks); s++ {
		n := 0
		for _, p := range picks[s : s+20] {
			if p == 0 {
				n++
			}
		}
		if n < 13 || n > 17 {
			t.Fatalf("window at %d: %d of 20 from the lane of weight 3, want 15 ± 2", s, n)
		}
	}
	// A lane with no work is skipped and does not bank credit.
	w = newSmoothWRR([]int{3, 1})
	for range 10 {
		if i := w.next([]bool{false, true}); i != 1 {
			t.Fatalf("picked %d with only lane 1 ready", i)
		}
	}
	if w.next([]bool{false, false}) != -1 {
		t.Error("picked a lane with none ready")
	}
}
