package ui

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/cellos/fleetd/internal/s3mem"
)

// chromium starts a headless Chromium for one test; without it the test is
// skipped, unless CI is set.
func chromium(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("chromium is not installed (CI is set, so the browser tests must run): %v", err)
		}
		t.Skip("chromium is not installed; skipping the browser test")
	}
	alloc, cancel := chromedp.NewExecAllocator(context.Background(), chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(900, 1000))
	t.Cleanup(cancel)
	ctx, cancelCtx := chromedp.NewContext(alloc)
	t.Cleanup(cancelCtx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(cancelTimeout)
	return ctx
}

// The chart as a browser draws it: every bar, the bars' heights in
// proportion to their counts. FLEETD_UI_CHART_PNG=path saves a screenshot
// of it (docs/ui-chart.png is one).
func TestChartInABrowser(t *testing.T) {
	ctx := chromium(t)
	store := &countingStore{Store: s3mem.New(s3mem.Quirks{})}
	// A day of work: a daily wave of completions, failures in two bursts.
	n := 0
	for m := range 24 * 60 {
		age := time.Duration(m)*time.Minute + 20*time.Second
		rate := 2 + 2*math.Sin(float64(m)/(24*60)*2*math.Pi*2)
		if m < 60 {
			rate = 3 + 3*math.Sin(float64(m)/9)
		}
		for i := range int(math.Round(rate)) {
			store.put(fmt.Sprintf("fleet/completed/job-%05d-%d.json", m, i), object{body: []byte(`{}`), age: age})
			n++
		}
		if m%97 < 3 || (m > 14 && m < 19) || (m > 300 && m < 330) {
			store.put(fmt.Sprintf("fleet/failed/job-%05d.json", m), object{body: []byte(`{}`), age: age,
				meta: failure("node-a", "supervisor exit 3", "3")})
		}
	}
	h := setup(t, store, nil)
	run := func(a chromedp.Action[chromedp.Void]) {
		t.Helper()
		if _, err := chromedp.Run(ctx, a); err != nil {
			t.Fatalf("browser: %v", err)
		}
	}
	eval := func(expr string) int {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[int](expr))
		if err != nil {
			t.Fatalf("browser: %v", err)
		}
		return v
	}
	run(chromedp.Steps(chromedp.Navigate(h.srv.URL+"/"), chromedp.WaitVisible(chromedp.CSS("#chart-day"))))
	bars := eval(`document.querySelectorAll("#chart-hour g.bar").length + document.querySelectorAll("#chart-day g.bar").length`)
	// A bar with a count drawn with no height, or one taller than the plot, is wrong.
	tall := eval(`Array.from(document.querySelectorAll("svg.chart g.bar")).filter(g => {
		const n = Number(g.dataset.completed) + Number(g.dataset.failed);
		const h = Array.from(g.querySelectorAll("rect")).reduce((s, r) => s + r.getBBox().height, 0);
		return (n > 0) !== (h > 0) || h > 115;
	}).length`)
	shot, err := chromedp.Run(ctx, chromedp.Screenshot(chromedp.CSS("#history")))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if bars != 84 {
		t.Errorf("%d bars drawn, want 60 + 24", bars)
	}
	if tall != 0 {
		t.Errorf("%d bars drawn out of proportion", tall)
	}
	if out := os.Getenv("FLEETD_UI_CHART_PNG"); out != "" {
		if err := os.WriteFile(out, shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("%d results; screenshot in %s", n, out)
	}
}
