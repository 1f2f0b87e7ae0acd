/// Keeps post_with_comments_counts in step with posts and comments.
pub struct PostWithCommentsCountOperator;
impl PostWithCommentsCountOperator {
    /// The name this operator is registered under.
    pub const NAME: &'static str = "PostWithCommentsCountOperator";
}
const _: (PostWithCommentsCountOperator, &str) = (
    PostWithCommentsCountOperator,
    PostWithCommentsCountOperator::NAME,
);
#[doc(hidden)]
const _: () = {
    #[allow(dead_code, unused_variables, clippy::all)]
    fn __walflow_check() {
        let _ = <Comment as ::walflow::__private::EventSource>::TABLE;
        let _ = <Post as ::walflow::__private::EventSource>::TABLE;
        let _ = <PostWithCommentsCount as ::walflow::__private::EventSource>::TABLE;
        {
            fn __walflow_field(__entity: &Comment) {
                let _ = &__entity.post_id;
            }
        }
        {
            fn __walflow_field(__entity: &Post) {
                let _ = &__entity.id;
            }
        }
        {
            fn __walflow_id(
                __target: &<PostWithCommentsCount as ::walflow::__private::EventSource>::Id,
                __entity: &Comment,
            ) {
                ::walflow::__private::same_type(__target, &__entity.post_id);
            }
        }
        {
            fn __walflow_id(
                __target: &<PostWithCommentsCount as ::walflow::__private::EventSource>::Id,
                __entity: &Post,
            ) {
                ::walflow::__private::same_type(__target, &__entity.id);
            }
        }
    }
    const __WALFLOW_OPERATOR: ::walflow::__private::OperatorRegistration = ::walflow::__private::OperatorRegistration {
        name: "PostWithCommentsCountOperator",
        location: ::walflow::__private::Location {
            module_path: ::core::module_path!(),
            file: ::core::file!(),
            line: ::core::line!(),
        },
        target: ::core::option::Option::Some(::walflow::__private::TargetRef {
            rust_name: <PostWithCommentsCount as ::walflow::__private::EventSource>::RUST_NAME,
            table: ::walflow::__private::TableRef {
                schema: <PostWithCommentsCount as ::walflow::__private::EventSource>::SCHEMA,
                table: <PostWithCommentsCount as ::walflow::__private::EventSource>::TABLE,
            },
            id_column: <PostWithCommentsCount as ::walflow::__private::EventSource>::ID_COLUMN,
        }),
        events: &[
            ::walflow::__private::EventKind::Insert,
            ::walflow::__private::EventKind::Update,
            ::walflow::__private::EventKind::Delete,
        ],
        entities: &[
            ::walflow::__private::TableRef {
                schema: <Comment as ::walflow::__private::EventSource>::SCHEMA,
                table: <Comment as ::walflow::__private::EventSource>::TABLE,
            },
            ::walflow::__private::TableRef {
                schema: <Post as ::walflow::__private::EventSource>::SCHEMA,
                table: <Post as ::walflow::__private::EventSource>::TABLE,
            },
        ],
        id_mapping: &[
            ::walflow::__private::IdMapping {
                table: ::walflow::__private::TableRef {
                    schema: <Comment as ::walflow::__private::EventSource>::SCHEMA,
                    table: <Comment as ::walflow::__private::EventSource>::TABLE,
                },
                column: ::walflow::__private::column_of(
                    <Comment as ::walflow::__private::EventSource>::FIELDS,
                    "post_id",
                ),
            },
            ::walflow::__private::IdMapping {
                table: ::walflow::__private::TableRef {
                    schema: <Post as ::walflow::__private::EventSource>::SCHEMA,
                    table: <Post as ::walflow::__private::EventSource>::TABLE,
                },
                column: ::walflow::__private::column_of(
                    <Post as ::walflow::__private::EventSource>::FIELDS,
                    "id",
                ),
            },
        ],
        delete_with: &[
            ::walflow::__private::TableRef {
                schema: <Post as ::walflow::__private::EventSource>::SCHEMA,
                table: <Post as ::walflow::__private::EventSource>::TABLE,
            },
        ],
        writes: &[],
        coalesce: true,
        action: ::walflow::__private::OperatorAction::Query("SELECT $1"),
    };
    ::walflow::__private::inventory::submit! {
        __WALFLOW_OPERATOR
    }
};
struct Audit;
impl Audit {
    /// The name this operator is registered under.
    const NAME: &'static str = "Audit";
}
const _: (Audit, &str) = (Audit, Audit::NAME);
#[doc(hidden)]
const _: () = {
    #[allow(dead_code, unused_variables, clippy::all)]
    fn __walflow_check() {
        let _ = <Comment as ::walflow::__private::EventSource>::TABLE;
        let _ = <Post as ::walflow::__private::EventSource>::TABLE;
        let _ = <AuditLog as ::walflow::__private::EventSource>::TABLE;
    }
    #[allow(dead_code)]
    fn __walflow_handler(
        __raw: &::walflow::__private::RawEvent,
        __ctx: ::walflow::__private::Ctx,
    ) -> ::walflow::__private::BoxFuture<
        'static,
        ::core::result::Result<(), ::walflow::__private::HandlerError>,
    > {
        let (__future, __input) = ::walflow::__private::call_handler(
            audit,
            __raw,
            __ctx,
        );
        ::walflow::__private::assert_carries::<Comment, _>(__input);
        ::walflow::__private::assert_carries::<Post, _>(__input);
        __future
    }
    const __WALFLOW_OPERATOR: ::walflow::__private::OperatorRegistration = ::walflow::__private::OperatorRegistration {
        name: "Audit",
        location: ::walflow::__private::Location {
            module_path: ::core::module_path!(),
            file: ::core::file!(),
            line: ::core::line!(),
        },
        target: ::core::option::Option::None,
        events: &[
            ::walflow::__private::EventKind::Insert,
            ::walflow::__private::EventKind::Delete,
        ],
        entities: &[
            ::walflow::__private::TableRef {
                schema: <Comment as ::walflow::__private::EventSource>::SCHEMA,
                table: <Comment as ::walflow::__private::EventSource>::TABLE,
            },
            ::walflow::__private::TableRef {
                schema: <Post as ::walflow::__private::EventSource>::SCHEMA,
                table: <Post as ::walflow::__private::EventSource>::TABLE,
            },
        ],
        id_mapping: &[
            ::walflow::__private::IdMapping {
                table: ::walflow::__private::TableRef {
                    schema: <Comment as ::walflow::__private::EventSource>::SCHEMA,
                    table: <Comment as ::walflow::__private::EventSource>::TABLE,
                },
                column: <Comment as ::walflow::__private::EventSource>::ID_COLUMN,
            },
            ::walflow::__private::IdMapping {
                table: ::walflow::__private::TableRef {
                    schema: <Post as ::walflow::__private::EventSource>::SCHEMA,
                    table: <Post as ::walflow::__private::EventSource>::TABLE,
                },
                column: <Post as ::walflow::__private::EventSource>::ID_COLUMN,
            },
        ],
        delete_with: &[],
        writes: &[
            ::walflow::__private::TableRef {
                schema: <AuditLog as ::walflow::__private::EventSource>::SCHEMA,
                table: <AuditLog as ::walflow::__private::EventSource>::TABLE,
            },
        ],
        coalesce: false,
        action: ::walflow::__private::OperatorAction::Handler(
            __walflow_handler as ::walflow::__private::HandlerFn,
        ),
    };
    ::walflow::__private::inventory::submit! {
        __WALFLOW_OPERATOR
    }
};
