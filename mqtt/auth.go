package mqtt

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/crypto/bcrypt"

	"github.com/moongate-edge/moongate/mqtt/topics"
)

// User is one device account of the embedded broker.
type User struct {
	// Username identifies the device. It must be a valid single topic level
	// (no '/', '+', '#'), because it is substituted into ACL filters.
	Username string
	// PasswordHash is a bcrypt hash, as produced by HashPassword.
	PasswordHash string
	// Publish lists the topic filters the user may publish to; "{username}"
	// is replaced by Username and "{clientid}" by the client id of the
	// connection (a client id that is not a valid topic level, or starts
	// with '$', matches no filter naming it). nil means
	// ["devices/{username}/#"]; an empty non-nil list allows nothing.
	Publish []string
	// Subscribe lists the topic filters the user may subscribe to (and
	// receive from), with the placeholders of Publish. nil means
	// ["devices/{username}/#"]; an empty non-nil list allows nothing.
	Subscribe []string
}

// DefaultACL is the filter used when a User's Publish or Subscribe list is nil.
const DefaultACL = "devices/{username}/#"

// HashPassword returns a bcrypt hash of pw for EmbeddedConfig.Users.
func HashPassword(pw string) (string, error) {
	if pw == "" {
		return "", fmt.Errorf("%w: empty password", ErrConfig)
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.DefaultCost)
	if err != nil {
		return "", fmt.Errorf("mqtt: hash password: %w", err)
	}
	return string(h), nil
}

// account is a User with its ACL expanded ({username} replaced;
// {clientid}, which depends on the connection, is replaced at each check).
type account struct {
	hash      []byte
	publish   []string
	subscribe []string
}

// clientIDLevel is the placeholder of a connection's client id in a filter.
const clientIDLevel = "{clientid}"

// forClient returns filters with {clientid} replaced by id. A client id
// that is not a valid single topic level (empty, with '/', '+' or '#', or
// starting with '$') matches nothing: the filters that name it are left
// out.
func forClient(filters []string, id string) []string {
	var out []string
	for i, f := range filters {
		if !strings.Contains(f, clientIDLevel) {
			if out != nil {
				out = append(out, f)
			}
			continue
		}
		if out == nil {
			out = append(make([]string, 0, len(filters)), filters[:i]...)
		}
		if id == "" || id[0] == '$' || strings.ContainsAny(id, "/+#") || topics.ValidName(id) != nil {
			continue
		}
		out = append(out, strings.ReplaceAll(f, clientIDLevel, id))
	}
	if out == nil {
		return filters
	}
	return out
}

// authenticator checks credentials and ACLs. Safe for concurrent use.
type authenticator struct {
	accounts map[string]*account
	sem      chan struct{} // bounds concurrent bcrypt work

	mu    sync.Mutex
	cache map[string][32]byte // username -> sha256(password) of the last success
}

func newAuthenticator(users []User) (*authenticator, error) {
	a := &authenticator{
		accounts: make(map[string]*account, len(users)),
		sem:      make(chan struct{}, 2),
		cache:    make(map[string][32]byte),
	}
	for i, u := range users {
		if u.Username == "" || strings.ContainsAny(u.Username, "/+#") || topics.ValidName(u.Username) != nil {
			return nil, fmt.Errorf("%w: users[%d]: username %q must be a non-empty single topic level", ErrConfig, i, u.Username)
		}
		if _, dup := a.accounts[u.Username]; dup {
			return nil, fmt.Errorf("%w: users[%d]: duplicate username %q", ErrConfig, i, u.Username)
		}
		if _, err := bcrypt.Cost([]byte(u.PasswordHash)); err != nil {
			return nil, fmt.Errorf("%w: users[%d] (%s): password_hash is not a bcrypt hash: %w", ErrConfig, i, u.Username, err)
		}
		acc := &account{hash: []byte(u.PasswordHash)}
		var err error
		if acc.publish, err = expandACL(u.Publish, u.Username); err != nil {
			return nil, fmt.Errorf("%w: users[%d] (%s): publish: %w", ErrConfig, i, u.Username, err)
		}
		if acc.subscribe, err = expandACL(u.Subscribe, u.Username); err != nil {
			return nil, fmt.Errorf("%w: users[%d] (%s): subscribe: %w", ErrConfig, i, u.Username, err)
		}
		a.accounts[u.Username] = acc
	}
	return a, nil
}

func expandACL(filters []string, username string) ([]string, error) {
	if filters == nil {
		filters = []string{DefaultACL}
	}
	out := make([]string, 0, len(filters))
	for _, f := range filters {
		f = strings.ReplaceAll(f, "{username}", username)
		if err := topics.ValidFilter(f); err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

// errAuthBusy is returned by check when the password check did not get its
// turn before ctx ended: the credentials are neither accepted nor refused.
var errAuthBusy = errors.New("mqtt: password check not started: too many waiting")

// check verifies a username and password. It waits for a bcrypt slot at
// most until ctx ends, then gives up with an error wrapping errAuthBusy.
func (a *authenticator) check(ctx context.Context, username string, password []byte) (bool, error) {
	acc, ok := a.accounts[username]
	if !ok {
		// Spend comparable time so unknown users are not distinguishable.
		if err := a.acquire(ctx); err != nil {
			return false, err
		}
		_ = bcrypt.CompareHashAndPassword(dummyHash(), password)
		<-a.sem
		return false, nil
	}
	sum := sha256.Sum256(password)
	a.mu.Lock()
	cached, hit := a.cache[username]
	a.mu.Unlock()
	if hit && subtle.ConstantTimeCompare(cached[:], sum[:]) == 1 {
		return true, nil
	}
	if err := a.acquire(ctx); err != nil {
		return false, err
	}
	err := bcrypt.CompareHashAndPassword(acc.hash, password)
	<-a.sem
	if err != nil {
		return false, nil
	}
	a.mu.Lock()
	a.cache[username] = sum
	a.mu.Unlock()
	return true, nil
}

// acquire takes a bcrypt slot, or fails once ctx ends.
func (a *authenticator) acquire(ctx context.Context) error {
	select {
	case a.sem <- struct{}{}:
		return nil
	default:
	}
	select {
	case a.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", errAuthBusy, ctx.Err())
	}
}

// dummyHash returns a bcrypt hash nobody knows the password of, computed on
// first use, so unknown users cost as much time as known ones.
var dummyHash = sync.OnceValue(func() []byte {
	h, err := bcrypt.GenerateFromPassword([]byte("moongate-unknown-user"), bcrypt.DefaultCost)
	if err != nil {
		return []byte("$2a$10$")
	}
	return h
})

// mayPublish reports whether username, connected with client id
// clientID, may publish to topic.
func (a *authenticator) mayPublish(username, clientID, topic string) bool {
	acc, ok := a.accounts[username]
	if !ok {
		return false
	}
	return topics.MatchAny(forClient(acc.publish, clientID), topic)
}

// mayRead reports whether username, connected with client id clientID,
// may subscribe to filter, or receive a message on topic (a topic is a
// filter without wildcards).
func (a *authenticator) mayRead(username, clientID, filterOrTopic string) bool {
	acc, ok := a.accounts[username]
	if !ok {
		return false
	}
	for _, f := range forClient(acc.subscribe, clientID) {
		if topics.Covers(f, filterOrTopic) {
			return true
		}
	}
	return false
}
