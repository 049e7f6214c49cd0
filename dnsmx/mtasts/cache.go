package mtasts

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// maxCached bounds the domains whose policy (or lack of one) is held in
// memory: every domain mail goes to is looked up, most of them without a
// policy, and a relay writing to a million domains kept an entry for each
// for good. Past it, the entries without a policy or with an expired one
// go, then (when Dir holds them) others, read again from Dir when needed.
const maxCached = 10000

// trimLocked makes room for one more entry; f.mu is held.
func (f *Fetcher) trimLocked() {
	if len(f.policies) < maxCached {
		return
	}
	now := f.now()
	for d, p := range f.policies {
		if p == nil || !now.Before(p.Expires()) {
			delete(f.policies, d)
		}
	}
	if len(f.policies) < maxCached || f.Dir == "" {
		return // without Dir a live policy is only here: kept
	}
	for d := range f.policies {
		if len(f.policies) < maxCached/2 {
			break
		}
		delete(f.policies, d)
	}
}

// staleTemp is the age past which a temporary file in Dir is what a
// crash left while writeAtomic wrote it.
const staleTemp = time.Hour

// Prune deletes from Dir the policies whose max_age has passed, and the
// temporary files a crash left there, and forgets those policies in memory.
// An expired policy is never applied again (the next mail to its domain
// fetches the policy anew), but its file stayed for good: one for every
// domain mail ever went to that published a policy. A policy stored
// meanwhile (kept in memory before its file is written) stays. It returns
// how many files it deleted.
func (f *Fetcher) Prune() int {
	if f.Dir == "" {
		return 0
	}
	ents, err := os.ReadDir(f.Dir)
	if err != nil {
		return 0
	}
	now := f.now()
	n := 0
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() {
			continue
		}
		if strings.HasPrefix(name, ".tmp-") {
			if fi, err := e.Info(); err == nil && now.Sub(fi.ModTime()) > staleTemp &&
				os.Remove(filepath.Join(f.Dir, name)) == nil {
				n++
			}
			continue
		}
		domain, ok := strings.CutSuffix(name, ".json")
		if !ok {
			continue
		}
		if p := f.load(domain); p == nil || now.Before(p.Expires()) {
			continue // unreadable ones are replaced at the next fetch
		}
		f.mu.Lock()
		if p := f.policies[domain]; p == nil || !now.Before(p.Expires()) {
			if os.Remove(filepath.Join(f.Dir, name)) == nil {
				n++
			}
			delete(f.policies, domain)
		}
		f.mu.Unlock()
	}
	return n
}

// cached returns the unexpired cached policy of domain, or nil. A domain
// not yet in memory is looked for in Dir.
func (f *Fetcher) cached(domain string) *Policy {
	f.mu.Lock()
	p, ok := f.policies[domain]
	f.mu.Unlock()
	if !ok {
		p = f.load(domain)
		f.mu.Lock()
		if f.policies == nil {
			f.policies = make(map[string]*Policy)
		}
		if q, ok := f.policies[domain]; ok {
			p = q // stored meanwhile
		} else {
			f.trimLocked()
			f.policies[domain] = p // nil too: Dir is read once per domain (while held)
		}
		f.mu.Unlock()
	}
	if p == nil || !f.now().Before(p.Expires()) {
		return nil
	}
	return p
}

// store caches p in memory and in Dir (best effort: a cache that cannot be
// written only costs a fetch after a restart).
func (f *Fetcher) store(p *Policy) {
	f.mu.Lock()
	if f.policies == nil {
		f.policies = make(map[string]*Policy)
	}
	if _, ok := f.policies[p.Domain]; !ok {
		f.trimLocked()
	}
	f.policies[p.Domain] = p
	f.mu.Unlock()
	if f.Dir == "" {
		return
	}
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return
	}
	writeAtomic(f.path(p.Domain), data)
}

// path is the cache file of domain (validated by Get: letters, digits,
// '-', '_' and dots, so it is a plain file name).
func (f *Fetcher) path(domain string) string {
	return filepath.Join(f.Dir, domain+".json")
}

// load reads the cached policy of domain from Dir; nil if there is none or
// it is unreadable (then it is fetched again).
func (f *Fetcher) load(domain string) *Policy {
	if f.Dir == "" {
		return nil
	}
	data, err := os.ReadFile(f.path(domain))
	if err != nil {
		return nil
	}
	var p Policy
	if json.Unmarshal(data, &p) != nil || p.Domain != domain || p.ID == "" ||
		(p.Mode != Enforce && p.Mode != Testing && p.Mode != None) {
		return nil
	}
	p.MaxAge = min(p.MaxAge, MaxMaxAge)
	return &p
}

// writeAtomic replaces path with data: a temporary file, fsync, rename,
// fsync of the directory. Errors are ignored (see store).
func writeAtomic(path string, data []byte) {
	dir := filepath.Dir(path)
	if os.MkdirAll(dir, 0o700) != nil {
		return
	}
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return
	}
	_, werr := tmp.Write(data)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if werr != nil || serr != nil || cerr != nil || os.Rename(tmp.Name(), path) != nil {
		os.Remove(tmp.Name())
		return
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
