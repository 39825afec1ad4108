package deploy

// The alert rules and the Grafana dashboard: promtool checks the rules and
// runs their unit tests, and every expression names only metrics fleetd
// exports.

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/metrics"
	"github.com/cellos/fleetd/internal/protocol"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
)

// promtool finds promtool: $FLEETD_PROMTOOL (set by the Makefile), the PATH,
// or .tools/bin, installing it there with `make promtool` when it is missing.
// It skips only when that fails outside CI; in CI a missing promtool fails.
func promtool(t *testing.T) string {
	t.Helper()
	local, err := filepath.Abs(filepath.Join(root, ".tools", "bin", "promtool"))
	if err != nil {
		t.Fatal(err)
	}
	candidates := []string{os.Getenv("FLEETD_PROMTOOL")}
	if p, err := exec.LookPath("promtool"); err == nil {
		candidates = append(candidates, p)
	}
	candidates = append(candidates, local)
	for _, p := range candidates {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	mk := exec.Command("make", "promtool")
	mk.Dir = root
	out, err := mk.CombinedOutput()
	if err == nil {
		return local
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("promtool missing and `make promtool` failed: %v\n%s", err, out)
	}
	t.Skipf("promtool missing and `make promtool` failed (install Debian's prometheus package or set FLEETD_PROMTOOL): %v\n%s", err, out)
	return ""
}

// TestAlertRules checks deploy/prometheus/alerts.yaml with promtool, runs its
// unit tests (alerts_test.yaml: each alert fires where it must and stays quiet
// where it must not), and checks that every expression names only metrics
// fleetd exports.
func TestAlertRules(t *testing.T) {
	tool := promtool(t)
	for _, args := range [][]string{
		{"check", "rules", "alerts.yaml"},
		{"test", "rules", "alerts_test.yaml"},
	} {
		cmd := exec.Command(tool, args...)
		cmd.Dir = "prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	raw, err := os.ReadFile(filepath.Join("prometheus", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	exported := exportedMetrics(t)
	var alerts []string
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			checkExpr(t, "alert "+r.Alert, r.Expr, exported)
		}
	}
	// The alerts issue 11 asks for, by what they watch.
	for _, want := range []string{"FleetdQueueNotDraining", "FleetdOldestPendingTooOld", "FleetdNoSuccessfulPoll",
		"FleetdS3ErrorRate", "FleetdLeaseTakeovers", "FleetdCellsFailing"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("alerts.yaml has no %s", want)
		}
	}
}

// TestDashboardMetrics checks that every query of the Grafana dashboard, the
// panels' and the variables', names only metrics a real fleetd registry
// exposes.
func TestDashboardMetrics(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("grafana", "fleetd.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("parse dashboard: %v", err)
	}
	exported := exportedMetrics(t)

	// Every "expr" anywhere under the panels, rows' nested panels included.
	var exprs []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && k == "expr" {
					exprs = append(exprs, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	var panels []any
	for _, p := range dash.Panels {
		var v any
		if err := json.Unmarshal(p, &v); err != nil {
			t.Fatal(err)
		}
		panels = append(panels, v)
		if m, ok := v.(map[string]any); ok && m["type"] != "row" {
			targets, _ := m["targets"].([]any)
			if len(targets) == 0 {
				t.Errorf("panel %q has no query", m["title"])
			}
		}
	}
	walk(panels)
	if len(exprs) < 10 {
		t.Fatalf("found %d queries in the dashboard, want at least 10", len(exprs))
	}
	for _, e := range exprs {
		checkExpr(t, "dashboard", e, exported)
	}

	labelValues := regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)`)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			if err := json.Unmarshal(v.Query, &q.Query); err != nil {
				t.Fatalf("variable %s: query: %v", v.Name, err)
			}
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(<metric>, <label>)", v.Name, q.Query)
			continue
		}
		if !exported(m[1]) {
			t.Errorf("variable %s: %s is not a metric fleetd exports", v.Name, m[1])
		}
	}
}

func TestMetricNames(t *testing.T) {
	cases := []struct {
		expr string
		want []string
	}{
		{`fleetd_cells_in_flight`, []string{"fleetd_cells_in_flight"}},
		{`sum by (outcome) (rate(fleetd_cells_finished_total{job=~"$job",outcome!="a b"}[$__rate_interval]))`, []string{"fleetd_cells_finished_total"}},
		{`time() - fleetd_last_poll_success_timestamp_seconds > 300 and (fleetd_cells_in_flight < fleetd_concurrency)`,
			[]string{"fleetd_last_poll_success_timestamp_seconds", "fleetd_cells_in_flight", "fleetd_concurrency"}},
		{`histogram_quantile(0.99, sum by (le, operation) (rate(x_bucket[5m] offset 1h)))`, []string{"x_bucket"}},
		{`a / on (job) group_left (version) b * 1e9 > bool 0.5`, []string{"a", "b"}},
		{`sum(rate(up{job="fleetd"}[5m])) unless nope_total`, []string{"up", "nope_total"}},
		{`vector(1)`, nil},
	}
	for _, c := range cases {
		if got := metricNames(c.expr); !slices.Equal(got, c.want) {
			t.Errorf("metricNames(%q) = %q, want %q", c.expr, got, c.want)
		}
	}
}

// checkExpr fails the test when expr names no metric or one fleetd does not export.
func checkExpr(t *testing.T, where, expr string, exported func(string) bool) {
	t.Helper()
	names := metricNames(expr)
	if len(names) == 0 {
		t.Errorf("%s: no metric name found in %q", where, expr)
	}
	for _, n := range names {
		if !exported(n) {
			t.Errorf("%s: %s is not a metric fleetd exports (in %q)", where, n, expr)
		}
	}
}

// exportedMetrics gathers a real registry from metrics.New, with one S3
// request recorded so the labelled families have a series, and returns a
// test for a metric name: a family, or a histogram's _bucket, _sum or _count.
func exportedMetrics(t *testing.T) func(string) bool {
	t.Helper()
	m := metrics.New(4, "test", "abc1234", protocol.EndingLabels()...) // the agent pre-creates a series per outcome
	m.S3Request("GetObject", 503, time.Millisecond)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	for _, want := range []string{"fleetd_cells_finished_total", "fleetd_s3_errors_total", "fleetd_s3_request_duration_seconds"} {
		if _, ok := fams[want]; !ok {
			t.Fatalf("the registry exposes no %s: is the gathering broken?", want)
		}
	}
	return func(name string) bool {
		if _, ok := fams[name]; ok {
			return true
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok {
				if f, ok := fams[base]; ok && (f.GetType() == dto.MetricType_HISTOGRAM || f.GetType() == dto.MetricType_SUMMARY) {
					return true
				}
			}
		}
		return false
	}
}

var (
	promqlStrings  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promqlBraces   = regexp.MustCompile(`\{[^}]*\}|\[[^\]]*\]`)
	promqlGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promqlVars     = regexp.MustCompile(`\$\{[^}]*\}|\$\w+`)
	promqlIdent    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promqlKeywords = []string{"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
		"group_left", "group_right", "inf", "nan", "Inf", "NaN", "start", "end"}
)

// metricNames returns the metric names a PromQL expression selects: the
// identifiers left once strings, label matchers, ranges, grouping clauses,
// Grafana variables, function calls and keywords are set aside.
func metricNames(expr string) []string {
	s := promqlStrings.ReplaceAllString(expr, `""`)
	s = promqlBraces.ReplaceAllString(s, " ")
	s = promqlGrouping.ReplaceAllString(s, " ")
	s = promqlVars.ReplaceAllString(s, " ")
	var names []string
	for _, loc := range promqlIdent.FindAllStringIndex(s, -1) {
		name := s[loc[0]:loc[1]]
		if loc[0] > 0 && strings.ContainsRune("0123456789.", rune(s[loc[0]-1])) {
			continue // the exponent of a number such as 1e9
		}
		if strings.HasPrefix(strings.TrimLeft(s[loc[1]:], " \t\n"), "(") {
			continue // a function
		}
		if slices.Contains(promqlKeywords, name) || slices.Contains(names, name) {
			continue
		}
		names = append(names, name)
	}
	return names
}
