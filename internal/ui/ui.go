// Package ui is fleetd's dashboard: the queue at a glance in a browser, read
// straight from the bucket (no database, no agent to reach), with requeue,
// cancel and pause behind --allow-actions. Pages are rendered on the server
// with html/template, which escapes everything the bucket holds: spec ids,
// reasons and bodies are untrusted. A little plain JavaScript swaps the live
// part of the page every few seconds; without it the page still reads.
package ui

import (
	"cmp"
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cellos/fleetd/internal/config"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/queueview"
	"github.com/cellos/fleetd/internal/store"
)

// Store is the bucket as the UI reads it: the read model's.
type Store = queueview.Store

// Admin is what the actions call: the queue tools' own code, so a button does
// exactly what the command line does. *admin.Admin implements it.
type Admin interface {
	Requeue(ctx context.Context, ids []string, all bool, olderThan time.Duration) ([]string, error)
	Cancel(ctx context.Context, id, by string) (protocol.CancelResult, error)
	Pause(ctx context.Context, prefix string, all bool, by string) ([]string, error)
	Resume(ctx context.Context, prefix string, all bool) ([]string, error)
}

// Config is what the UI serves and how.
type Config struct {
	Store  Store
	Layout store.Layout
	Bucket string
	// Prefix is the queue's prefix (CELLOS_FLEET_PREFIX), which Pause takes.
	Prefix string
	// Lane is the queue name of Layout (CELLOS_FLEET_QUEUE_NAME), which
	// /depth reports.
	Lane string
	// TTL is the daemon's lease ttl, by which a claim with no lease is judged.
	TTL time.Duration

	// Admin runs the actions; nil, or AllowActions false, turns them off.
	Admin        Admin
	AllowActions bool
	// By names who acts, in the records of what an action did (a cancel's reason).
	By string
	// Token, if set, must be presented once (a login form) before anything
	// is shown or done.
	Token string
	// LoopbackHosts: the UI listens on loopback only, so a request must name
	// a loopback host. A page another site rebinds to 127.0.0.1 names its own.
	LoopbackHosts bool

	// KeyLimit bounds the keys listed per state (default
	// queueview.KeyLimit); ResultLimit the latest results read per state
	// (queueview.ResultLimit); LeaseLimit the leases read per refresh
	// (queueview.LeaseLimit); BodyLimit the spec bytes shown (default 64 KiB).
	KeyLimit, ResultLimit, LeaseLimit int
	BodyLimit                         int64
	// HistoryLimit bounds the results listed per state for the chart
	// (default 100,000), HistoryEvery how often they are listed (default a
	// minute: the chart's finest bar). OutputLimit bounds the output a spec
	// page shows (default 1 MiB, CELLOS_FLEET_OUTPUT_BYTES's default).
	HistoryLimit int
	HistoryEvery time.Duration
	OutputLimit  int64
	// Refresh is the page's refresh period (default 5 s).
	Refresh time.Duration
	Logger  *slog.Logger
	// Now is the clock that ages cached snapshots (default time.Now).
	Now func() time.Time
}

// limits are the read model's bounds.
func (c Config) limits() queueview.Limits {
	return queueview.Limits{Keys: c.KeyLimit, Results: c.ResultLimit, Leases: c.LeaseLimit}
}

// Server serves the UI.
type Server struct {
	cfg     Config
	reader  *queueview.Reader
	page    *template.Template
	secrets secrets
	mux     *http.ServeMux

	depths  depthCache
	history *history

	mu      sync.Mutex // one snapshot at a time, shared by every open page
	last    *queueview.Snapshot
	lastErr error
	lastAt  time.Time
}

// snapshotReuse is how long a snapshot serves every page that asks: two tabs,
// or a reload on top of a refresh, cost the bucket one read.
const snapshotReuse = time.Second

//go:embed templates/*.html static/*
var files embed.FS

// New checks cfg and returns the UI.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("ui: no store")
	}
	cfg.KeyLimit = cmp.Or(cfg.KeyLimit, queueview.KeyLimit)
	cfg.ResultLimit = cmp.Or(cfg.ResultLimit, queueview.ResultLimit)
	cfg.LeaseLimit = cmp.Or(cfg.LeaseLimit, queueview.LeaseLimit)
	cfg.BodyLimit = cmp.Or(cfg.BodyLimit, 64<<10)
	cfg.HistoryLimit = cmp.Or(cfg.HistoryLimit, 100_000)
	cfg.HistoryEvery = cmp.Or(cfg.HistoryEvery, time.Minute)
	cfg.OutputLimit = cmp.Or(cfg.OutputLimit, 1<<20)
	cfg.Refresh = cmp.Or(cfg.Refresh, 5*time.Second)
	cfg.TTL = cmp.Or(cfg.TTL, time.Minute)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Admin == nil {
		cfg.AllowActions = false
	}
	page, err := template.New("").Funcs(funcs).ParseFS(files, "templates/*.html")
	if err != nil {
		return nil, fmt.Errorf("ui: templates: %w", err)
	}
	sec, err := newSecrets(cfg.Token)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, page: page, secrets: sec, depths: depthCache{lanes: map[string]depthRead{}},
		history: &history{store: cfg.Store, layout: cfg.Layout, limit: cfg.HistoryLimit, every: cfg.HistoryEvery, now: cfg.Now},
		reader:  queueview.NewReader(cfg.Store, cfg.Layout, cfg.TTL, cfg.limits())}
	static, _ := fs.Sub(files, "static")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.index)
	mux.HandleFunc("GET /live", s.live)
	mux.HandleFunc("GET /spec", s.spec)
	mux.HandleFunc("GET /depth", s.depth)
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /login", s.loginForm)
	mux.HandleFunc("POST /login", s.login)
	mux.HandleFunc("POST /requeue", s.action(s.requeue))
	mux.HandleFunc("POST /cancel", s.action(s.cancel))
	mux.HandleFunc("POST /pause", s.action(s.pause))
	mux.HandleFunc("POST /resume", s.action(s.resume))
	s.mux = mux
	return s, nil
}

// ServeHTTP checks the host and the session, sets the headers every answer
// carries, and routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// Scripts and styles come from this server only; no page may frame this
	// one (a framed button can be clicked by a page that hides it).
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	if s.cfg.LoopbackHosts && !loopbackHost(r.Host) {
		http.Error(w, "fleetd ui: this UI answers only to a loopback host name (localhost, 127.0.0.1, [::1])", http.StatusMisdirectedRequest)
		return
	}
	if s.cfg.Token != "" && !s.secrets.session(r) && r.URL.Path != "/login" && !strings.HasPrefix(r.URL.Path, "/static/") &&
		!(r.URL.Path == "/depth" && s.secrets.bearer(r)) {
		if r.Method == http.MethodGet && r.URL.Path == "/" {
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		}
		http.Error(w, "fleetd ui: log in first ("+string(config.UIToken)+")", http.StatusUnauthorized)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// snapshot returns a snapshot no older than snapshotReuse.
func (s *Server) snapshot(ctx context.Context) (*queueview.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now := s.cfg.Now(); s.lastAt.IsZero() || now.Sub(s.lastAt) >= snapshotReuse {
		s.last, s.lastErr = s.reader.Snapshot(ctx, queueview.Parts{Results: true, Sessions: true})
		if s.lastErr != nil {
			s.lastErr = fmt.Errorf("ui: %w", s.lastErr)
		}
		s.lastAt = s.cfg.Now()
		if s.lastErr != nil {
			s.cfg.Logger.Warn("read the queue", "event", "ui.read_failed", "err", s.lastErr)
		}
	}
	return s.last, s.lastErr
}

// invalidate makes the next page read the bucket afresh, after an action.
func (s *Server) invalidate() {
	s.mu.Lock()
	s.lastAt = time.Time{}
	s.mu.Unlock()
}

// view is what the templates render.
type view struct {
	Bucket   string
	Base     string
	Snap     *queueview.Snapshot
	Err      string
	Paused   bool
	Filter   string
	Failures []queueview.Failure
	// FailuresRead is how many of the latest failures were read to filter.
	FailuresRead int
	KeyLimit     int
	ResultLimit  int
	Actions      bool
	CSRF         string
	Flash        string
	FlashErr     bool
	RefreshMS    int64
	// History is the chart's; HistoryErr says why there is none.
	History      *History
	HistoryErr   string
	HistoryLimit int
}

// RefreshSeconds is the period of the reload without JavaScript: slower,
// since it reloads the whole page.
func (v view) RefreshSeconds() int64 { return max(10, 2*v.RefreshMS/1000) }

func (s *Server) view(r *http.Request) view {
	v := view{
		Bucket: s.cfg.Bucket, Base: strings.TrimSuffix(s.cfg.Layout.Dir(store.Pending), "pending/"),
		Filter: strings.TrimSpace(r.URL.Query().Get("reason")), KeyLimit: s.cfg.KeyLimit, ResultLimit: s.cfg.ResultLimit,
		Actions: s.cfg.AllowActions, CSRF: s.secrets.csrf, RefreshMS: s.cfg.Refresh.Milliseconds(),
	}
	snap, err := s.snapshot(r.Context())
	if err != nil {
		v.Err = err.Error()
		return v
	}
	v.Snap = snap
	v.Paused = snap.Paused
	v.HistoryLimit = s.cfg.HistoryLimit
	if v.History, err = s.history.get(r.Context()); err != nil {
		v.HistoryErr = err.Error()
		s.cfg.Logger.Warn("read the history", "event", "ui.history_failed", "err", err)
	}
	v.FailuresRead = len(snap.Failures)
	f := strings.ToLower(v.Filter)
	for _, fl := range snap.Failures {
		if f == "" || strings.Contains(strings.ToLower(fl.Reason), f) {
			v.Failures = append(v.Failures, fl)
		}
	}
	return v
}

func (s *Server) render(w http.ResponseWriter, name string, data any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := s.page.ExecuteTemplate(w, name, data); err != nil {
		s.cfg.Logger.Warn("render", "event", "ui.render_failed", "template", name, "err", err)
	}
}

func (s *Server) index(w http.ResponseWriter, r *http.Request) {
	v := s.view(r)
	v.Flash, v.FlashErr = takeFlash(w, r)
	if s.cfg.AllowActions {
		s.secrets.setCSRFCookie(w)
	}
	s.render(w, "page.html", v)
}

// live is the part of the page the script swaps in place.
func (s *Server) live(w http.ResponseWriter, r *http.Request) {
	s.render(w, "live", s.view(r))
}

// Serve serves the UI on ln until ctx ends, then shuts down: no new
// connections, requests in progress get up to 5 s.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelWarn)}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("ui: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-done
	return err
}

var funcs = template.FuncMap{
	"age": func(d time.Duration) string {
		d = d.Round(time.Second)
		switch {
		case d < time.Minute:
			return d.String()
		case d < time.Hour:
			return d.Truncate(time.Second).String()
		case d < 48*time.Hour:
			return d.Truncate(time.Minute).String()
		default:
			return fmt.Sprintf("%dd", int(d.Hours()/24))
		}
	},
	"when": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
}
