package deploy

// The release build and the image: make dist's static binaries, stamped, and
// the Dockerfile's stages, user and tag.

import (
	"crypto/sha256"
	"debug/elf"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
)

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
	mk := exec.Command("make", "dist", "DIST="+dir)
	mk.Dir = root
	if out, err := mk.CombinedOutput(); err != nil {
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
	stages := parseDockerfile(t, filepath.Join(root, "Dockerfile"))
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
		cmd.Dir = root // the build context
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
	checkStatic(t, filepath.Join(root, output), elfMachine[runtime.GOARCH])
	runVersion(t, filepath.Join(root, output), sourceVersion(t), revision)

	built := filepath.Join(build.workdir, output)
	copied := slices.ContainsFunc(final.copies, func(c string) bool {
		f := strings.Fields(c)
		return slices.Contains(f, "--from=build") && slices.Contains(f, built)
	})
	if !copied {
		t.Errorf("the runtime stage does not COPY --from=build %s (copies: %q)", built, final.copies)
	}

	docker, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^USER\s+[1-9][0-9]*(:[1-9][0-9]*)?\s*$`).Match(docker) {
		t.Error("the image does not run as a numeric non-root USER")
	}
	manifest, err := os.ReadFile("kubernetes.yaml")
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

// sourceVersion is fleetd's version as cmd/fleetd/main.go sets it.
func sourceVersion(t *testing.T) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(root, "cmd", "fleetd", "main.go"))
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
