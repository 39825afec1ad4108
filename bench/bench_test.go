package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSmoke runs every scenario at tiny sizes so the harness keeps working. It
// checks that each produced a report section and never judges a timing.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers and agents")
	}
	out := t.TempDir()
	if err := run([]string{"-smoke", "-out", out}); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(out, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, section := range []string{"## 1–2.", "## 3.", "## 4.", "## 5.", "## 6.", "## 7.", "## 8.", "## 9.", "## 10.", "## 11.", "## 12.", "## 13.", "## 14.", "## 15.", "## 16.", "## 17.", "## Targets"} {
		if !strings.Contains(string(md), section) {
			t.Errorf("report lacks %q", section)
		}
	}
	if st, err := os.Stat(filepath.Join(out, "throughput.png")); err != nil || st.Size() == 0 {
		t.Errorf("chart: %v", err)
	}
}
