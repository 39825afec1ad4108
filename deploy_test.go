// Tests of what ships beside the binary: alert rules, the Grafana dashboard,
// the release build and the Dockerfile. They need no S3 server.
package deploy_test

import (
	"crypto/sha256"
	"debug/elf"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/cellos/fleetd/internal/metrics"
	"github.com/cellos/fleetd/internal/protocol"
)

// promtool finds promtool: $FLEETD_PROMTOOL (set by the Makefile), the PATH,
// or .tools/bin, installing it there with `make promtool` when it is missing.
// It skips only when that fails outside CI; in CI a missing promtool fails.
func promtool(t *testing.T) string {
	t.Helper()
	local, err := filepath.Abs(filepath.Join(".tools", "bin", "promtool"))
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
	out, err := exec.Command("make", "promtool").CombinedOutput()
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
		cmd.Dir = filepath.Join("deploy", "prometheus")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	raw, err := os.ReadFile(filepath.Join("deploy", "prometheus", "alerts.yaml"))
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
	raw, err := os.ReadFile(filepath.Join("deploy", "grafana", "fleetd.json"))
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

// sourceVersion is fleetd's version as cmd/fleetd/main.go sets it.
func sourceVersion(t *testing.T) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("cmd", "fleetd", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*version\s*=\s*"([^"]+)"`).FindSubmatch(src)
	if m == nil {
		t.Fatal("no version in cmd/fleetd/main.go")
	}
	return string(m[1])
}

// checkStatic fails unless path is a statically linked ELF for arch.
func checkStatic(t *testing.T, path string, machine elf.Machine) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	defer f.Close()
	if f.Machine != machine {
		t.Errorf("%s: machine %v, want %v", path, f.Machine, machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s is dynamically linked (has %v): build it with CGO_ENABLED=0", path, p.Type)
		}
	}
}

// runVersion runs bin --version and checks it names version and revision.
func runVersion(t *testing.T, bin, version, revision string) {
	t.Helper()
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --version: %v\n%s", bin, err, out)
	}
	if got, want := strings.TrimSpace(string(out)), fmt.Sprintf("fleetd %s (%s)", version, revision); got != want {
		t.Errorf("%s --version = %q, want %q", bin, got, want)
	}
}

var elfMachine = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// TestMakeDist runs `make dist` into a temporary directory: static binaries for
// linux/amd64 and linux/arm64, a SHA256SUMS that matches them, and the host's
// binary prints the stamped version and revision.
func TestMakeDist(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two release binaries")
	}
	version := sourceVersion(t)
	revOut, err := exec.Command("git", "rev-parse", "--short=7", "HEAD").Output()
	if err != nil {
		t.Skipf("not a git checkout: %v", err)
	}
	revision := strings.TrimSpace(string(revOut))
	dir := t.TempDir()
	if out, err := exec.Command("make", "dist", "DIST="+dir).CombinedOutput(); err != nil {
		t.Fatalf("make dist: %v\n%s", err, out)
	}

	sums, err := os.ReadFile(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q is not `<sum>  <file>`", line)
		}
		listed[name] = sum
	}
	for _, arch := range []string{"amd64", "arm64"} {
		name := fmt.Sprintf("fleetd-%s-linux-%s", version, arch)
		body, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("make dist made no %s: %v", name, err)
			continue
		}
		if got := fmt.Sprintf("%x", sha256.Sum256(body)); listed[name] != got {
			t.Errorf("SHA256SUMS has %q for %s, the file hashes to %s", listed[name], name, got)
		}
		checkStatic(t, filepath.Join(dir, name), elfMachine[arch])
	}
	if len(listed) != 2 {
		t.Errorf("SHA256SUMS lists %d files, want 2:\n%s", len(listed), sums)
	}
	if runtime.GOOS == "linux" && elfMachine[runtime.GOARCH] != 0 {
		runVersion(t, filepath.Join(dir, fmt.Sprintf("fleetd-%s-linux-%s", version, runtime.GOARCH)), version, revision)
	}
}

// dockerStage is one FROM ... AS name stage of a Dockerfile.
type dockerStage struct {
	name    string
	workdir string
	args    map[string]string // ARG defaults
	runs    []string          // RUN commands, shell form
	copies  []string          // COPY arguments
}

// parseDockerfile reads the instructions this project's Dockerfile uses,
// joining continued lines and dropping comments.
func parseDockerfile(t *testing.T, path string) []*dockerStage {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var stages []*dockerStage
	var logical []string
	cur := ""
	for _, line := range strings.Split(string(raw), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue
		}
		if s, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur += s + " "
			continue
		}
		if cur += trimmed; strings.TrimSpace(cur) != "" {
			logical = append(logical, strings.TrimSpace(cur))
		}
		cur = ""
	}
	for _, l := range logical {
		instr, rest, _ := strings.Cut(l, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "FROM":
			s := &dockerStage{args: map[string]string{}}
			f := strings.Fields(rest)
			if len(f) >= 3 && strings.EqualFold(f[len(f)-2], "AS") {
				s.name = f[len(f)-1]
			}
			stages = append(stages, s)
		case "ARG":
			k, v, _ := strings.Cut(rest, "=")
			stages[len(stages)-1].args[k] = v
		case "WORKDIR":
			stages[len(stages)-1].workdir = rest
		case "RUN":
			stages[len(stages)-1].runs = append(stages[len(stages)-1].runs, rest)
		case "COPY":
			stages[len(stages)-1].copies = append(stages[len(stages)-1].copies, rest)
		}
	}
	return stages
}

// TestDockerfileBuildStage runs the Dockerfile's build stage as written, with
// the repository as its WORKDIR (what `COPY . .` makes it) and the build args
// a `docker build` for this host would pass, since no container engine runs
// here. The binary must be static, print the stamped revision, and be the file
// the runtime stage copies. It also checks the image runs as non-root and is
// the one deploy/kubernetes.yaml names.
func TestDockerfileBuildStage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a release binary")
	}
	stages := parseDockerfile(t, "Dockerfile")
	if len(stages) < 2 || stages[0].name != "build" {
		t.Fatalf("want a multi-stage Dockerfile whose first stage is `AS build`, got %d stages", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]
	const revision = "d0c4e12"
	args := map[string]string{}
	maps.Copy(args, build.args)
	args["TARGETOS"], args["TARGETARCH"], args["REVISION"] = "linux", runtime.GOARCH, revision
	var output string
	for _, run := range build.runs {
		cmd := exec.Command("sh", "-c", run)
		cmd.Env = os.Environ()
		for k, v := range args {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("RUN %s: %v\n%s", run, err, out)
		}
		if m := regexp.MustCompile(`\bgo build\b.*\s-o\s+(\S+)`).FindStringSubmatch(run); m != nil {
			if !strings.Contains(run, "CGO_ENABLED=0") {
				t.Errorf("the build stage's go build does not set CGO_ENABLED=0: %s", run)
			}
			output = m[1]
		}
	}
	if output == "" {
		t.Fatal("the build stage has no `go build ... -o <file>`")
	}
	if runtime.GOOS != "linux" || elfMachine[runtime.GOARCH] == 0 {
		t.Skipf("built; cannot run a linux binary on %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	checkStatic(t, output, elfMachine[runtime.GOARCH])
	runVersion(t, output, sourceVersion(t), revision)

	built := filepath.Join(build.workdir, output)
	copied := slices.ContainsFunc(final.copies, func(c string) bool {
		f := strings.Fields(c)
		return slices.Contains(f, "--from=build") && slices.Contains(f, built)
	})
	if !copied {
		t.Errorf("the runtime stage does not COPY --from=build %s (copies: %q)", built, final.copies)
	}

	docker, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^USER\s+[1-9][0-9]*(:[1-9][0-9]*)?\s*$`).Match(docker) {
		t.Error("the image does not run as a numeric non-root USER")
	}
	manifest, err := os.ReadFile(filepath.Join("deploy", "kubernetes.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	image := regexp.MustCompile(`(?m)^\s*image:\s*(\S+)`).FindSubmatch(manifest)
	if image == nil {
		t.Fatal("deploy/kubernetes.yaml names no image")
	}
	if want := "registry.example/cellos/fleetd:" + sourceVersion(t); string(image[1]) != want {
		t.Errorf("deploy/kubernetes.yaml runs %s, want %s (the version fleetd reports)", image[1], want)
	}
	if !strings.Contains(string(docker), "-t "+string(image[1])) {
		t.Errorf("the Dockerfile's build instructions do not tag %s, the image deploy/kubernetes.yaml runs", image[1])
	}
}
