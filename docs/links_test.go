// Package docs_test checks that the documentation's links resolve: every
// relative link and image in README.md and docs/*.md names a file that exists,
// and every #anchor names a heading of its page, so a section moved between
// pages cannot leave a dead link behind. It needs nothing but the files.
package docs_test

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// pages are the documents checked, relative to this directory.
func pages(t *testing.T) []string {
	t.Helper()
	md, err := filepath.Glob("*.md")
	if err != nil {
		t.Fatal(err)
	}
	return append([]string{"../README.md"}, md...)
}

func TestLinksResolve(t *testing.T) {
	for _, page := range pages(t) {
		for _, l := range links(t, page) {
			if strings.Contains(l.target, "://") || strings.HasPrefix(l.target, "mailto:") {
				continue // not ours to check offline
			}
			path, anchor, _ := strings.Cut(l.target, "#")
			file := page
			if path != "" {
				file = filepath.Join(filepath.Dir(page), path)
				if _, err := os.Stat(file); err != nil {
					t.Errorf("%s:%d: link to %s: no such file", page, l.line, l.target)
					continue
				}
			}
			if anchor == "" || !strings.HasSuffix(file, ".md") {
				continue
			}
			if !slices.Contains(anchors(t, file), anchor) {
				t.Errorf("%s:%d: link to %s: %s has no heading with anchor #%s", page, l.line, l.target, file, anchor)
			}
		}
	}
}

// TestLinkChecker shows the checker can fail: it finds links outside code,
// skips those in code, and spells anchors as GitHub does.
func TestLinkChecker(t *testing.T) {
	dir := t.TempDir()
	page := filepath.Join(dir, "p.md")
	src := "# The ttl (`CELLOS_FLEET_LEASE_TTL_MS`): what it means\n" +
		"See [a](a.md#x) and ![b](img/b.png \"title\") and `[c](c.md)`.\n" +
		"    [d](d.md)\n" +
		"```\n[e](e.md)\n```\n" +
		"## Stores\n## Stores\n"
	if err := os.WriteFile(page, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range links(t, page) {
		got = append(got, l.target)
	}
	if want := []string{"a.md#x", "img/b.png"}; !slices.Equal(got, want) {
		t.Errorf("links = %q, want %q", got, want)
	}
	want := []string{"the-ttl-cellos_fleet_lease_ttl_ms-what-it-means", "stores", "stores-1"}
	if got := anchors(t, page); !slices.Equal(got, want) {
		t.Errorf("anchors = %q, want %q", got, want)
	}
}

type link struct {
	line   int
	target string
}

var (
	linkRE = regexp.MustCompile(`!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	codeRE = regexp.MustCompile("`[^`]*`")
)

// links returns the link targets of a Markdown page outside code blocks and
// code spans.
func links(t *testing.T, page string) []link {
	t.Helper()
	var out []link
	eachProseLine(t, page, func(n int, line string) {
		line = codeRE.ReplaceAllString(line, "")
		for _, m := range linkRE.FindAllStringSubmatch(line, -1) {
			out = append(out, link{n, m[1]})
		}
	})
	return out
}

// anchors returns the anchors GitHub gives the page's headings, in order.
func anchors(t *testing.T, page string) []string {
	t.Helper()
	var out []string
	seen := map[string]int{}
	eachProseLine(t, page, func(_ int, line string) {
		if !strings.HasPrefix(line, "#") {
			return
		}
		text := strings.TrimSpace(strings.TrimLeft(line, "#"))
		a := slug(text)
		if n := seen[a]; n > 0 {
			seen[a]++
			a += "-" + strconv.Itoa(n)
		} else {
			seen[a] = 1
		}
		out = append(out, a)
	})
	return out
}

// slug is GitHub's heading anchor: lower case, letters, digits, '-' and '_'
// kept, spaces made '-', everything else dropped.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case unicode.IsLetter(r), unicode.IsDigit(r), r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// eachProseLine calls fn with each line of page outside fenced and indented
// code blocks.
func eachProseLine(t *testing.T, page string, fn func(n int, line string)) {
	t.Helper()
	f, err := os.Open(page)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	fenced := false
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if fenced || strings.HasPrefix(line, "    ") || strings.HasPrefix(line, "\t") {
			continue
		}
		fn(n, line)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}
