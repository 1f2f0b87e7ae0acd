#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Comment {
    pub id: i64,
    pub post_id: i64,
    #[serde(rename = "text")]
    body: String,
}
#[doc(hidden)]
const _: () = {
    #[automatically_derived]
    impl ::walflow::__private::EventSource for Comment {
        const RUST_NAME: &'static str = "Comment";
        const SCHEMA: &'static str = "blog";
        const TABLE: &'static str = "comments";
        const ID_COLUMN: &'static str = "id";
        const COLUMNS: &'static [&'static str] = &["id", "postId", "text"];
        const FIELDS: &'static [(&'static str, &'static str)] = &[
            ("id", "id"),
            ("post_id", "postId"),
            ("body", "text"),
        ];
        const REPLICA_IDENTITY_FULL: bool = true;
        type Id = i64;
        fn id(&self) -> &Self::Id {
            &self.id
        }
    }
    #[allow(dead_code)]
    fn __walflow_check() {
        ::walflow::__private::assert_deserialize::<Comment>();
    }
    const __WALFLOW_ENTITY: ::walflow::__private::EntityRegistration = ::walflow::__private::EntityRegistration::of::<
        Comment,
    >(::walflow::__private::Location {
        module_path: ::core::module_path!(),
        file: ::core::file!(),
        line: ::core::line!(),
    });
    ::walflow::__private::inventory::submit! {
        __WALFLOW_ENTITY
    }
};
#[allow(dead_code)]
impl Comment {
    /// Column `id` of `blog.comments`.
    pub const ID: ::walflow::__private::Field<Comment, i64> = ::walflow::__private::Field::new(
        "id",
    );
    /// Column `postId` of `blog.comments`.
    pub const POST_ID: ::walflow::__private::Field<Comment, i64> = ::walflow::__private::Field::new(
        "postId",
    );
    /// Column `text` of `blog.comments`.
    const BODY: ::walflow::__private::Field<Comment, String> = ::walflow::__private::Field::new(
        "text",
    );
}
