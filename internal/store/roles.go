package store

import "context"

// The reads of a bucket, one method each, for the interfaces a user of the
// store declares: a reader of the queue composes the ones it calls rather
// than spelling the methods out again. *Store implements each.

// Lister lists keys: fn is called with each page under prefix, in key order;
// an error from fn stops the listing and is returned.
type Lister interface {
	List(ctx context.Context, prefix string, fn func(Page) error) error
}

// Getter reads an object whole, up to limit bytes (ErrTooLarge past it).
type Getter interface {
	Get(ctx context.Context, key string, limit int64) (Object, error)
}

// Header reads an object's metadata.
type Header interface {
	Head(ctx context.Context, key string) (Object, error)
}

var (
	_ Lister = (*Store)(nil)
	_ Getter = (*Store)(nil)
	_ Header = (*Store)(nil)
)
