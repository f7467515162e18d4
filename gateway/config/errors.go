package config

import (
	"errors"
	"fmt"
)

// ErrInvalid is wrapped by every error about the content of a configuration
// file (syntax, unknown key, wrong type, bad value). Callers branch on it with
// errors.Is; errors reading the file itself (not found, permission) do not
// wrap it.
var ErrInvalid = errors.New("invalid configuration")

// Error is one precise problem in a YAML document. Line is 1-based, 0 when
// the problem is not tied to a line (a value that comes from the defaults or
// the environment). Path is the dotted key path ("mqtt.embedded.users[0].username").
// Err, when set, is the underlying cause (for example a parse error).
//
// Every *Error wraps [ErrInvalid].
type Error struct {
	File string
	Line int
	Path string
	Msg  string
	Err  error
}

// Error formats the problem as "file:line: path: msg", leaving out the parts
// that are empty.
func (e *Error) Error() string {
	s := ""
	switch {
	case e.File != "" && e.Line > 0:
		s = fmt.Sprintf("%s:%d: ", e.File, e.Line)
	case e.File != "":
		s = e.File + ": "
	case e.Line > 0:
		s = fmt.Sprintf("line %d: ", e.Line)
	}
	if e.Path != "" {
		s += e.Path + ": "
	}
	return s + e.Msg
}

// Unwrap returns ErrInvalid and the underlying cause, if any.
func (e *Error) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrInvalid, e.Err}
	}
	return []error{ErrInvalid}
}

// Errors returns the individual *Error values in err (which may be a single
// *Error or an errors.Join of them, possibly nested). Other errors in the
// tree are skipped.
func Errors(err error) []*Error {
	var out []*Error
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		if e, ok := err.(*Error); ok {
			out = append(out, e)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		if x := errors.Unwrap(err); x != nil {
			walk(x)
		}
	}
	walk(err)
	return out
}

// ErrorAt returns err as a problem of the value at path (a dotted key path
// as in Error.Path) of c's file, with its line when the value comes from
// the file: for checks made outside this package (a trigger pattern of
// sync.forward, parsed by the trigger package) to report like Validate.
func (c *Config) ErrorAt(path string, err error) *Error {
	e := &Error{File: c.file, Line: c.lines.At(path), Path: path, Msg: err.Error(), Err: err}
	if env, ok := c.env[path]; ok {
		e.Msg += " (set by $" + env + ")"
	}
	return e
}
