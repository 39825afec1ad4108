package ui

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/cellos/fleetd/internal/config"
)

// The cookies of the UI. The CSRF cookie is SameSite=Strict: a POST another
// site makes does not carry it.
const (
	csrfCookie    = "fleetd_ui_csrf"
	sessionCookie = "fleetd_ui_session"
	flashCookie   = "fleetd_ui_flash"
)

// secrets are this process's: a restart logs everyone out and voids every
// form served before it.
type secrets struct {
	csrf  string // in every form and in the CSRF cookie
	key   []byte // signs the session cookie
	token string // CELLOS_FLEET_UI_TOKEN, if set
	// loginMu serialises failed logins, each held a second: one guess a second.
	loginMu *sync.Mutex
}

func newSecrets(token string) (secrets, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return secrets{}, fmt.Errorf("ui: random key: %w", err)
	}
	return secrets{csrf: rand.Text(), key: key, token: token, loginMu: new(sync.Mutex)}, nil
}

// sessionValue is the session cookie of whoever gave the token: a MAC of it,
// so the cookie does not hold the token itself.
func (s secrets) sessionValue() string {
	mac := hmac.New(sha256.New, s.key)
	mac.Write([]byte(s.token))
	return hex.EncodeToString(mac.Sum(nil))
}

func (s secrets) session(r *http.Request) bool {
	c, err := r.Cookie(sessionCookie)
	return err == nil && hmac.Equal([]byte(c.Value), []byte(s.sessionValue()))
}

// tokenMatches compares in constant time (of the MACs, so of equal length).
func (s secrets) tokenMatches(given string) bool {
	mac := func(v string) []byte {
		m := hmac.New(sha256.New, s.key)
		m.Write([]byte(v))
		return m.Sum(nil)
	}
	return hmac.Equal(mac(given), mac(s.token))
}

func (s secrets) setCSRFCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: s.csrf, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
}

// checkPost refuses a POST that another origin made, or that does not carry
// this process's CSRF token both in the form and in the cookie.
func (s secrets) checkPost(r *http.Request) error {
	if err := sameOrigin(r); err != nil {
		return err
	}
	c, err := r.Cookie(csrfCookie)
	if err != nil {
		return errors.New("no CSRF cookie: reload the page")
	}
	form := r.PostFormValue("csrf")
	if !hmac.Equal([]byte(form), []byte(s.csrf)) || !hmac.Equal([]byte(c.Value), []byte(s.csrf)) {
		return errors.New("stale or forged form: reload the page")
	}
	return nil
}

// sameOrigin: the request comes from a page of this server, by its Origin
// (sent with every POST by current browsers) or, failing that, its Referer.
// A request with neither is refused: a browser always sends one of them here,
// since the pages set Referrer-Policy: same-origin.
func sameOrigin(r *http.Request) error {
	from := r.Header.Get("Origin")
	if from == "" || from == "null" {
		from = r.Header.Get("Referer")
	}
	if from == "" {
		return errors.New("no Origin or Referer header")
	}
	u, err := url.Parse(from)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || !strings.EqualFold(u.Host, r.Host) {
		return fmt.Errorf("cross-origin request from %q", from)
	}
	return nil
}

// loopbackHost reports whether host (with or without a port) names this
// machine's loopback interface.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// CheckListen checks the listen address against what was asked for: a
// non-loopback address shows the queue to whoever reaches it, so it needs
// allowRemote; actions there need a token too. It reports whether addr is
// loopback.
func CheckListen(addr string, allowRemote, allowActions bool, token string) (loopback bool, err error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, fmt.Errorf("--listen %q: want HOST:PORT, e.g. 127.0.0.1:8080", addr)
	}
	if loopbackHost(host) {
		return true, nil
	}
	if !allowRemote {
		return false, fmt.Errorf("--listen %s is not a loopback address: whoever reaches it sees the queue; "+
			"add --allow-remote to serve it there, or keep 127.0.0.1 and reach it through an SSH tunnel or kubectl port-forward", addr)
	}
	if allowActions && token == "" {
		return false, fmt.Errorf("--allow-actions on the non-loopback address %s needs a token: set %s", addr, config.UIToken)
	}
	return false, nil
}

// setFlash leaves a message for the next page, which shows it once.
func setFlash(w http.ResponseWriter, msg string, isErr bool) {
	if len(msg) > 512 {
		msg = msg[:512] + "…"
	}
	kind := "i:"
	if isErr {
		kind = "e:"
	}
	http.SetCookie(w, &http.Cookie{Name: flashCookie, Value: url.QueryEscape(kind + msg), Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, MaxAge: 60})
}

func takeFlash(w http.ResponseWriter, r *http.Request) (msg string, isErr bool) {
	c, err := r.Cookie(flashCookie)
	if err != nil {
		return "", false
	}
	http.SetCookie(w, &http.Cookie{Name: flashCookie, Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	v, err := url.QueryUnescape(c.Value)
	if err != nil || len(v) < 2 {
		return "", false
	}
	return v[2:], v[:2] == "e:"
}

func (s *Server) loginForm(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Token == "" {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	s.secrets.setCSRFCookie(w)
	s.render(w, "login.html", struct{ CSRF, Err string }{CSRF: s.secrets.csrf})
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if s.cfg.Token == "" {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	if err := s.secrets.checkPost(r); err != nil {
		http.Error(w, "fleetd ui: refused: "+err.Error(), http.StatusForbidden)
		return
	}
	if !s.secrets.tokenMatches(r.PostFormValue("token")) {
		s.secrets.loginMu.Lock()
		time.Sleep(time.Second)
		s.secrets.loginMu.Unlock()
		s.cfg.Logger.Warn("ui login refused", "event", "ui.login_refused", "remote", r.RemoteAddr)
		w.WriteHeader(http.StatusForbidden)
		s.render(w, "login.html", struct{ CSRF, Err string }{CSRF: s.secrets.csrf, Err: "wrong token"})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: s.secrets.sessionValue(), Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}
