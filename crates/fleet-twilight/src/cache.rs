//! The cluster's cache: twilight's in-memory cache over lean models.
//!
//! twilight's default models keep every field Discord sends: a channel is 1.2 KB before its
//! strings, a member and its user 0.8 KB. With the map entries around them the mock's guild
//! (three channels, two roles, five members) costs some 12.9 KB, and at a thousand guilds a shard
//! that is nearly all of a cluster's memory. These models keep the fields bots read (ids, names,
//! kinds, positions, parents, overwrites, roles, nicknames, avatars, join dates, counts), strings
//! as boxed slices and timestamps as one word each: the same guild costs 4.2 KB, 1.8 KB when
//! only the bot's own member comes (a bot without the `GUILD_MEMBERS` intent). The cache, its
//! [`ResourceType`](crate::ResourceType)s and its lookups are twilight's; only the values are
//! smaller.
//!
//! Each model serializes to Discord's JSON with the fields it keeps (what `Ipc::fetch_*` answers),
//! and turns back into twilight's model with the rest at Discord's defaults (what a handover
//! carries to the replacement's cache, which keeps the same fields again).

use std::num::NonZeroI64;

use serde::{Serialize, Serializer};
use twilight_cache_inmemory::model::{
    CachedEmoji, CachedMessage, CachedPresence, CachedSticker, CachedVoiceState,
    ComputedInteractionMember,
};
use twilight_cache_inmemory::{
    CacheableChannel, CacheableGuild, CacheableMember, CacheableModels, CacheableRole,
    CacheableUser, InMemoryCache,
};
use twilight_model::application::interaction::InteractionMember;
use twilight_model::channel::permission_overwrite::PermissionOverwrite;
use twilight_model::channel::{Channel as ChannelModel, ChannelType, StageInstance};
use twilight_model::gateway::payload::incoming::{GuildUpdate, MemberUpdate};
use twilight_model::guild::scheduled_event::GuildScheduledEvent;
use twilight_model::guild::{
    Guild as GuildModel, GuildFeature, GuildIntegration, Member as MemberModel, MemberFlags,
    MfaLevel, NSFWLevel, PartialMember, Permissions, PremiumTier, Role as RoleModel, RoleFlags,
    VerificationLevel,
};
use twilight_model::id::Id;
use twilight_model::id::marker::{
    ChannelMarker, GenericMarker, GuildMarker, RoleMarker, UserMarker,
};
use twilight_model::user::{CurrentUser, DiscriminatorDisplay, User as UserModel};
use twilight_model::util::{ImageHash, Timestamp};

/// The cluster's cache: twilight's [`InMemoryCache`] over [`Models`].
pub type Cache = InMemoryCache<Models>;

/// The lean models the cache keeps: [`Guild`], [`Channel`], [`Role`], [`Member`] and [`User`];
/// twilight's own for the rest (emojis, stickers, messages, presences, voice states...).
#[derive(Clone, Debug)]
pub struct Models;

impl CacheableModels for Models {
    type Channel = Channel;
    type CurrentUser = CurrentUser;
    type Emoji = CachedEmoji;
    type Guild = Guild;
    type GuildIntegration = GuildIntegration;
    type GuildScheduledEvent = GuildScheduledEvent;
    type Member = Member;
    type Message = CachedMessage;
    type Presence = CachedPresence;
    type Role = Role;
    type StageInstance = StageInstance;
    type Sticker = CachedSticker;
    type User = User;
    type VoiceState = CachedVoiceState;
}

/// A point in time in one word: Unix microseconds (Discord's timestamps are all after 1970).
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq, PartialOrd, Ord)]
pub struct Stamp(NonZeroI64);

impl Stamp {
    /// The same point as twilight's [`Timestamp`].
    ///
    /// # Panics
    /// Never: a stamp is made from a valid timestamp.
    #[must_use]
    pub fn timestamp(self) -> Timestamp {
        Timestamp::from_micros(self.0.get()).expect("a stamp is made from a valid timestamp")
    }

    fn of(timestamp: Option<Timestamp>) -> Option<Self> {
        timestamp.and_then(|t| NonZeroI64::new(t.as_micros()).map(Self))
    }

    fn back(stamp: Option<Self>) -> Option<Timestamp> {
        stamp.map(Self::timestamp)
    }
}

impl Serialize for Stamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.timestamp().serialize(serializer)
    }
}

/// A short text kept inline, such as a locale (`en-US`, `es-419`): at most 8 bytes.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, PartialEq)]
pub struct Locale([u8; 8]);

impl Locale {
    fn of(text: &str) -> Self {
        let mut bytes = [0; 8];
        if text.len() <= bytes.len() {
            bytes[..text.len()].copy_from_slice(text.as_bytes());
        }
        Self(bytes)
    }

    /// The text (empty for a locale longer than 8 bytes, which Discord does not have).
    #[must_use]
    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        std::str::from_utf8(&self.0[..len]).unwrap_or_default()
    }
}

impl Serialize for Locale {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

fn boxed(text: Option<String>) -> Option<Box<str>> {
    text.map(String::into_boxed_str)
}

fn same_text(kept: Option<&str>, given: Option<&String>) -> bool {
    kept == given.map(String::as_str)
}

/// A guild, without its channels, roles and members (the cache keeps them apart).
#[derive(Clone, Debug, Eq, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Guild {
    /// Its id.
    pub id: Id<GuildMarker>,
    /// Its name.
    pub name: Box<str>,
    /// Its icon.
    pub icon: Option<ImageHash>,
    /// Its owner.
    pub owner_id: Id<UserMarker>,
    /// Its members, as Discord counts them (kept up by member events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member_count: Option<u64>,
    /// When the bot joined it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joined_at: Option<Stamp>,
    /// Where Discord posts joins and boosts.
    pub system_channel_id: Option<Id<ChannelMarker>>,
    /// Its rules channel (community guilds).
    pub rules_channel_id: Option<Id<ChannelMarker>>,
    /// Its features (`COMMUNITY`, `VERIFIED`, ...).
    pub features: Box<[GuildFeature]>,
    /// Its boosts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub premium_subscription_count: Option<u64>,
    /// Its locale.
    pub preferred_locale: Locale,
    /// Its boost tier.
    pub premium_tier: PremiumTier,
    /// What a member must have done before speaking.
    pub verification_level: VerificationLevel,
    /// Its age-restriction level.
    pub nsfw_level: NSFWLevel,
    /// Whether moderators need two-factor authentication.
    pub mfa_level: MfaLevel,
    /// Whether it is over the large threshold (its members come in chunks).
    pub large: bool,
    /// Whether it is in an outage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<bool>,
}

impl From<GuildModel> for Guild {
    fn from(guild: GuildModel) -> Self {
        Self {
            id: guild.id,
            name: guild.name.into_boxed_str(),
            icon: guild.icon,
            owner_id: guild.owner_id,
            member_count: guild.member_count,
            joined_at: Stamp::of(guild.joined_at),
            system_channel_id: guild.system_channel_id,
            rules_channel_id: guild.rules_channel_id,
            features: guild.features.into_boxed_slice(),
            premium_subscription_count: guild.premium_subscription_count,
            preferred_locale: Locale::of(&guild.preferred_locale),
            premium_tier: guild.premium_tier,
            verification_level: guild.verification_level,
            nsfw_level: guild.nsfw_level,
            mfa_level: guild.mfa_level,
            large: guild.large,
            unavailable: guild.unavailable,
        }
    }
}

// Each model equals twilight's when the fields it keeps are the same (the cache compares them to
// skip an update that changes nothing), compared in place: no copy is made.

impl PartialEq<GuildModel> for Guild {
    fn eq(&self, other: &GuildModel) -> bool {
        self.id == other.id
            && *self.name == other.name
            && self.icon == other.icon
            && self.owner_id == other.owner_id
            && self.member_count == other.member_count
            && self.joined_at == Stamp::of(other.joined_at)
            && self.system_channel_id == other.system_channel_id
            && self.rules_channel_id == other.rules_channel_id
            && *self.features == other.features
            && self.premium_subscription_count == other.premium_subscription_count
            && self.preferred_locale == Locale::of(&other.preferred_locale)
            && self.premium_tier == other.premium_tier
            && self.verification_level == other.verification_level
            && self.nsfw_level == other.nsfw_level
            && self.mfa_level == other.mfa_level
            && self.large == other.large
            && self.unavailable == other.unavailable
    }
}

impl CacheableGuild for Guild {
    fn id(&self) -> Id<GuildMarker> {
        self.id
    }

    fn set_unavailable(&mut self, unavailable: Option<bool>) {
        self.unavailable = unavailable;
    }

    fn update_with_guild_update(&mut self, update: &GuildUpdate) {
        self.name = update.name.as_str().into();
        self.icon = update.icon;
        self.owner_id = update.owner_id;
        self.system_channel_id = update.system_channel_id;
        self.rules_channel_id = update.rules_channel_id;
        self.features = update.features.clone().into_boxed_slice();
        self.premium_subscription_count = update.premium_subscription_count;
        self.preferred_locale = Locale::of(&update.preferred_locale);
        self.premium_tier = update.premium_tier;
        self.verification_level = update.verification_level;
        self.nsfw_level = update.nsfw_level;
        self.mfa_level = update.mfa_level;
        if update.member_count.is_some() {
            self.member_count = update.member_count;
        }
    }

    fn increase_member_count(&mut self, amount: u64) {
        self.member_count = self.member_count.map(|n| n.saturating_add(amount));
    }

    fn decrease_member_count(&mut self, amount: u64) {
        self.member_count = self.member_count.map(|n| n.saturating_sub(amount));
    }
}

/// A channel or thread.
#[derive(Clone, Debug, Eq, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Channel {
    /// Its id.
    pub id: Id<ChannelMarker>,
    /// Its guild (none for a DM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guild_id: Option<Id<GuildMarker>>,
    /// Text, voice, category, thread, forum...
    #[serde(rename = "type")]
    pub kind: ChannelType,
    /// Its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Box<str>>,
    /// Its place in the list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<i32>,
    /// Its category, or a thread's channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<Id<ChannelMarker>>,
    /// Its permission overwrites.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permission_overwrites: Option<Box<[PermissionOverwrite]>>,
    /// Its topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<Box<str>>,
    /// Whether it is age-restricted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nsfw: Option<bool>,
    /// Slowmode, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_user: Option<u16>,
    /// A thread's creator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<Id<UserMarker>>,
    /// The newest message (as of the channel's last update).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_message_id: Option<Id<GenericMarker>>,
    /// When a message was last pinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_pin_timestamp: Option<Stamp>,
}

impl From<ChannelModel> for Channel {
    fn from(channel: ChannelModel) -> Self {
        Self {
            id: channel.id,
            guild_id: channel.guild_id,
            kind: channel.kind,
            name: boxed(channel.name),
            position: channel.position,
            parent_id: channel.parent_id,
            permission_overwrites: channel.permission_overwrites.map(Vec::into_boxed_slice),
            topic: boxed(channel.topic),
            nsfw: channel.nsfw,
            rate_limit_per_user: channel.rate_limit_per_user,
            owner_id: channel.owner_id,
            last_message_id: channel.last_message_id,
            last_pin_timestamp: Stamp::of(channel.last_pin_timestamp),
        }
    }
}

impl PartialEq<ChannelModel> for Channel {
    fn eq(&self, other: &ChannelModel) -> bool {
        self.id == other.id
            && self.guild_id == other.guild_id
            && self.kind == other.kind
            && same_text(self.name.as_deref(), other.name.as_ref())
            && self.position == other.position
            && self.parent_id == other.parent_id
            && self.permission_overwrites.as_deref() == other.permission_overwrites.as_deref()
            && same_text(self.topic.as_deref(), other.topic.as_ref())
            && self.nsfw == other.nsfw
            && self.rate_limit_per_user == other.rate_limit_per_user
            && self.owner_id == other.owner_id
            && self.last_message_id == other.last_message_id
            && self.last_pin_timestamp == Stamp::of(other.last_pin_timestamp)
    }
}

impl CacheableChannel for Channel {
    fn guild_id(&self) -> Option<Id<GuildMarker>> {
        self.guild_id
    }

    fn kind(&self) -> ChannelType {
        self.kind
    }

    fn id(&self) -> Id<ChannelMarker> {
        self.id
    }

    fn set_last_pin_timestamp(&mut self, timestamp: Option<Timestamp>) {
        self.last_pin_timestamp = Stamp::of(timestamp);
    }
}

/// A role.
#[derive(Clone, Debug, Eq, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Role {
    /// Its id (a guild's `@everyone` role has the guild's).
    pub id: Id<RoleMarker>,
    /// Its name.
    pub name: Box<str>,
    /// What it allows.
    pub permissions: Permissions,
    /// Its place in the hierarchy.
    pub position: i64,
    /// Its colour (the primary one).
    pub color: u32,
    /// Its flags.
    pub flags: RoleFlags,
    /// Whether its members are listed apart.
    pub hoist: bool,
    /// Whether an integration manages it.
    pub managed: bool,
    /// Whether anyone may mention it.
    pub mentionable: bool,
}

impl From<RoleModel> for Role {
    #[allow(deprecated)] // `color` is what Discord still sends beside `colors`.
    fn from(role: RoleModel) -> Self {
        Self {
            id: role.id,
            name: role.name.into_boxed_str(),
            permissions: role.permissions,
            position: role.position,
            color: role.colors.primary_color,
            flags: role.flags,
            hoist: role.hoist,
            managed: role.managed,
            mentionable: role.mentionable,
        }
    }
}

impl PartialEq<RoleModel> for Role {
    fn eq(&self, other: &RoleModel) -> bool {
        self.id == other.id
            && *self.name == other.name
            && self.permissions == other.permissions
            && self.position == other.position
            && self.color == other.colors.primary_color
            && self.flags == other.flags
            && self.hoist == other.hoist
            && self.managed == other.managed
            && self.mentionable == other.mentionable
    }
}

impl CacheableRole for Role {
    fn position(&self) -> i64 {
        self.position
    }

    fn id(&self) -> Id<RoleMarker> {
        self.id
    }
}

/// A guild member, without its user (the cache keeps users apart, once for all their guilds).
#[derive(Clone, Debug, Eq, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Member {
    /// Its user.
    pub user_id: Id<UserMarker>,
    /// Its nickname in the guild.
    pub nick: Option<Box<str>>,
    /// Its roles.
    pub roles: Box<[Id<RoleMarker>]>,
    /// When it joined.
    pub joined_at: Option<Stamp>,
    /// Since when it boosts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub premium_since: Option<Stamp>,
    /// Until when it is timed out.
    pub communication_disabled_until: Option<Stamp>,
    /// Its guild avatar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar: Option<ImageHash>,
    /// Its flags.
    pub flags: MemberFlags,
    /// Whether it is deafened in voice (unknown from an interaction).
    pub deaf: Option<bool>,
    /// Whether it is muted in voice (unknown from an interaction).
    pub mute: Option<bool>,
    /// Whether it has yet to pass membership screening.
    pub pending: bool,
}

impl From<MemberModel> for Member {
    fn from(member: MemberModel) -> Self {
        Self {
            user_id: member.user.id,
            nick: boxed(member.nick),
            roles: member.roles.into_boxed_slice(),
            joined_at: Stamp::of(member.joined_at),
            premium_since: Stamp::of(member.premium_since),
            communication_disabled_until: Stamp::of(member.communication_disabled_until),
            avatar: member.avatar,
            flags: member.flags,
            deaf: Some(member.deaf),
            mute: Some(member.mute),
            pending: member.pending,
        }
    }
}

impl From<ComputedInteractionMember> for Member {
    fn from(member: ComputedInteractionMember) -> Self {
        let ComputedInteractionMember {
            avatar,
            deaf,
            mute,
            user_id,
            interaction_member,
        } = member;
        Self {
            user_id,
            nick: boxed(interaction_member.nick),
            roles: interaction_member.roles.into_boxed_slice(),
            joined_at: Stamp::of(interaction_member.joined_at),
            premium_since: Stamp::of(interaction_member.premium_since),
            communication_disabled_until: Stamp::of(
                interaction_member.communication_disabled_until,
            ),
            avatar,
            flags: interaction_member.flags,
            deaf,
            mute,
            pending: interaction_member.pending,
        }
    }
}

impl From<(Id<UserMarker>, PartialMember)> for Member {
    fn from((user_id, member): (Id<UserMarker>, PartialMember)) -> Self {
        Self {
            user_id,
            nick: boxed(member.nick),
            roles: member.roles.into_boxed_slice(),
            joined_at: Stamp::of(member.joined_at),
            premium_since: Stamp::of(member.premium_since),
            communication_disabled_until: Stamp::of(member.communication_disabled_until),
            avatar: member.avatar,
            flags: member.flags,
            deaf: Some(member.deaf),
            mute: Some(member.mute),
            pending: false,
        }
    }
}

impl PartialEq<MemberModel> for Member {
    fn eq(&self, other: &MemberModel) -> bool {
        self.user_id == other.user.id
            && same_text(self.nick.as_deref(), other.nick.as_ref())
            && *self.roles == other.roles
            && self.joined_at == Stamp::of(other.joined_at)
            && self.premium_since == Stamp::of(other.premium_since)
            && self.communication_disabled_until == Stamp::of(other.communication_disabled_until)
            && self.avatar == other.avatar
            && self.flags == other.flags
            && self.deaf == Some(other.deaf)
            && self.mute == Some(other.mute)
            && self.pending == other.pending
    }
}

impl PartialEq<PartialMember> for Member {
    fn eq(&self, other: &PartialMember) -> bool {
        same_text(self.nick.as_deref(), other.nick.as_ref())
            && *self.roles == other.roles
            && self.joined_at == Stamp::of(other.joined_at)
            && self.premium_since == Stamp::of(other.premium_since)
            && self.communication_disabled_until == Stamp::of(other.communication_disabled_until)
            && self.avatar == other.avatar
            && self.flags == other.flags
            && self.deaf == Some(other.deaf)
            && self.mute == Some(other.mute)
    }
}

impl PartialEq<InteractionMember> for Member {
    fn eq(&self, other: &InteractionMember) -> bool {
        same_text(self.nick.as_deref(), other.nick.as_ref())
            && *self.roles == other.roles
            && self.joined_at == Stamp::of(other.joined_at)
            && self.premium_since == Stamp::of(other.premium_since)
            && self.communication_disabled_until == Stamp::of(other.communication_disabled_until)
            && self.avatar == other.avatar
            && self.flags == other.flags
            && self.pending == other.pending
    }
}

impl CacheableMember for Member {
    fn roles(&self) -> &[Id<RoleMarker>] {
        &self.roles
    }

    fn avatar(&self) -> Option<ImageHash> {
        self.avatar
    }

    fn deaf(&self) -> Option<bool> {
        self.deaf
    }

    fn mute(&self) -> Option<bool> {
        self.mute
    }

    fn update_with_member_update(&mut self, update: &MemberUpdate) {
        self.avatar = update.avatar;
        self.deaf = update.deaf.or(self.deaf);
        self.mute = update.mute.or(self.mute);
        self.nick = update.nick.as_deref().map(Into::into);
        self.roles = update.roles.as_slice().into();
        self.joined_at = Stamp::of(update.joined_at);
        self.premium_since = Stamp::of(update.premium_since);
        self.pending = update.pending;
        self.communication_disabled_until = Stamp::of(update.communication_disabled_until);
        if let Some(flags) = update.flags {
            self.flags = flags;
        }
    }
}

/// A user.
#[derive(Clone, Debug, Eq, PartialEq, Serialize)]
#[non_exhaustive]
pub struct User {
    /// Its id.
    pub id: Id<UserMarker>,
    /// Its unique name.
    #[serde(rename = "username")]
    pub name: Box<str>,
    /// Its display name.
    pub global_name: Option<Box<str>>,
    /// Its avatar.
    pub avatar: Option<ImageHash>,
    /// Its discriminator (0 for a user with a unique name).
    #[serde(serialize_with = "discriminator")]
    pub discriminator: u16,
    /// Whether it is a bot.
    pub bot: bool,
    /// Whether it is Discord's own.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub system: bool,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
fn discriminator<S: Serializer>(value: &u16, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&DiscriminatorDisplay::new(*value))
}

impl From<UserModel> for User {
    fn from(user: UserModel) -> Self {
        Self {
            id: user.id,
            name: user.name.into_boxed_str(),
            global_name: boxed(user.global_name),
            avatar: user.avatar,
            discriminator: user.discriminator,
            bot: user.bot,
            system: user.system.unwrap_or(false),
        }
    }
}

impl PartialEq<UserModel> for User {
    fn eq(&self, other: &UserModel) -> bool {
        self.id == other.id
            && *self.name == other.name
            && same_text(self.global_name.as_deref(), other.global_name.as_ref())
            && self.avatar == other.avatar
            && self.discriminator == other.discriminator
            && self.bot == other.bot
            && self.system == other.system.unwrap_or(false)
    }
}

impl CacheableUser for User {}

// Back to twilight's models, the rest at Discord's defaults: what a handover carries.

impl Channel {
    /// twilight's channel with what this keeps.
    ///
    /// # Panics
    /// Never: an id and a type make a channel.
    #[must_use]
    pub fn to_model(&self) -> ChannelModel {
        let mut channel: ChannelModel = serde_json::from_value(serde_json::json!({
            "id": self.id,
            "type": self.kind,
        }))
        .expect("an id and a type make a channel");
        channel.guild_id = self.guild_id;
        channel.name = self.name.as_deref().map(Into::into);
        channel.position = self.position;
        channel.parent_id = self.parent_id;
        channel.permission_overwrites = self.permission_overwrites.as_deref().map(<[_]>::to_vec);
        channel.topic = self.topic.as_deref().map(Into::into);
        channel.nsfw = self.nsfw;
        channel.rate_limit_per_user = self.rate_limit_per_user;
        channel.owner_id = self.owner_id;
        channel.last_message_id = self.last_message_id;
        channel.last_pin_timestamp = Stamp::back(self.last_pin_timestamp);
        channel
    }
}

impl Role {
    /// twilight's role with what this keeps.
    #[must_use]
    #[allow(deprecated)] // `color` is what Discord still sends beside `colors`.
    pub fn to_model(&self) -> RoleModel {
        RoleModel {
            color: self.color,
            colors: twilight_model::guild::RoleColors {
                primary_color: self.color,
                secondary_color: None,
                tertiary_color: None,
            },
            hoist: self.hoist,
            icon: None,
            id: self.id,
            managed: self.managed,
            mentionable: self.mentionable,
            name: self.name.as_ref().into(),
            permissions: self.permissions,
            position: self.position,
            flags: self.flags,
            tags: None,
            unicode_emoji: None,
        }
    }
}

impl User {
    /// twilight's user with what this keeps.
    #[must_use]
    pub fn to_model(&self) -> UserModel {
        UserModel {
            accent_color: None,
            avatar: self.avatar,
            avatar_decoration: None,
            avatar_decoration_data: None,
            banner: None,
            bot: self.bot,
            discriminator: self.discriminator,
            email: None,
            flags: None,
            global_name: self.global_name.as_deref().map(Into::into),
            id: self.id,
            locale: None,
            mfa_enabled: None,
            name: self.name.as_ref().into(),
            premium_type: None,
            primary_guild: None,
            public_flags: None,
            system: self.system.then_some(true),
            verified: None,
        }
    }
}

impl Member {
    /// twilight's member with what this keeps, and its user.
    #[must_use]
    pub fn to_model(&self, user: UserModel) -> MemberModel {
        MemberModel {
            avatar: self.avatar,
            avatar_decoration_data: None,
            banner: None,
            communication_disabled_until: Stamp::back(self.communication_disabled_until),
            deaf: self.deaf.unwrap_or(false),
            flags: self.flags,
            joined_at: Stamp::back(self.joined_at),
            mute: self.mute.unwrap_or(false),
            nick: self.nick.as_deref().map(Into::into),
            pending: self.pending,
            premium_since: Stamp::back(self.premium_since),
            roles: self.roles.to_vec(),
            user,
        }
    }
}

impl Guild {
    /// twilight's guild with what this keeps and these channels, roles and members.
    ///
    /// # Panics
    /// Never: the fields Discord requires are given.
    #[must_use]
    pub fn to_model(
        &self,
        channels: Vec<ChannelModel>,
        roles: Vec<RoleModel>,
        members: Vec<MemberModel>,
    ) -> GuildModel {
        let mut guild: GuildModel = serde_json::from_value(serde_json::json!({
            "id": self.id,
            "name": "",
            "owner_id": self.owner_id,
            "afk_timeout": 300,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "features": [],
            "emojis": [],
            "roles": [],
            "mfa_level": 0,
            "nsfw_level": 0,
            "preferred_locale": "",
            "premium_progress_bar_enabled": false,
            "system_channel_flags": 0,
            "verification_level": 0,
        }))
        .expect("the required fields make a guild");
        guild.name = self.name.as_ref().into();
        guild.icon = self.icon;
        guild.member_count = self.member_count;
        guild.joined_at = Stamp::back(self.joined_at);
        guild.system_channel_id = self.system_channel_id;
        guild.rules_channel_id = self.rules_channel_id;
        guild.features = self.features.to_vec();
        guild.premium_subscription_count = self.premium_subscription_count;
        self.preferred_locale
            .as_str()
            .clone_into(&mut guild.preferred_locale);
        guild.premium_tier = self.premium_tier;
        guild.verification_level = self.verification_level;
        guild.nsfw_level = self.nsfw_level;
        guild.mfa_level = self.mfa_level;
        guild.large = self.large;
        guild.unavailable = self.unavailable;
        guild.channels = channels;
        guild.roles = roles;
        guild.members = members;
        guild
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ResourceType;
    use discord_mock::MockConfig;
    use discord_mock::world::World;
    use twilight_model::gateway::event::Event;
    use twilight_model::gateway::payload::incoming::{GuildCreate, MemberAdd};

    fn every_kind() -> ResourceType {
        ResourceType::GUILD
            | ResourceType::CHANNEL
            | ResourceType::MEMBER
            | ResourceType::ROLE
            | ResourceType::USER
            | ResourceType::EMOJI
    }

    /// The mock's guilds, as twilight reads their `GUILD_CREATE`.
    fn guilds(count: usize) -> Vec<GuildModel> {
        let world = World::new(&MockConfig::builder().guilds(count).build());
        world
            .guilds()
            .map(|g| serde_json::from_str(world.create_payload(&g, true).get()).unwrap())
            .collect()
    }

    fn filled(guilds: &[GuildModel]) -> Cache {
        let cache = Cache::builder().resource_types(every_kind()).build();
        for guild in guilds {
            cache.update(&Event::GuildCreate(Box::new(GuildCreate::Available(
                guild.clone(),
            ))));
        }
        cache
    }

    #[test]
    fn a_guild_create_fills_the_lean_models_with_what_discord_sent() {
        let guilds = guilds(3);
        let cache = filled(&guilds);
        for sent in &guilds {
            let guild = cache.guild(sent.id).unwrap();
            assert!(*guild == *sent);
            assert_eq!(&*guild.name, sent.name.as_str());
            assert_eq!(guild.preferred_locale.as_str(), sent.preferred_locale);
            assert_eq!(
                guild.joined_at.map(Stamp::timestamp),
                sent.joined_at,
                "timestamps keep their microseconds"
            );
            for channel in &sent.channels {
                let cached = cache.channel(channel.id).unwrap();
                assert_eq!(cached.guild_id, Some(sent.id));
                assert_eq!(cached.name.as_deref(), channel.name.as_deref());
                assert_eq!(cached.kind, channel.kind);
            }
            for role in &sent.roles {
                assert!(*cache.role(role.id).unwrap().resource() == *role);
            }
            assert_eq!(
                cache.guild_members(sent.id).unwrap().len(),
                sent.members.len()
            );
            for member in &sent.members {
                assert!(*cache.member(sent.id, member.user.id).unwrap() == *member);
                assert!(*cache.user(member.user.id).unwrap() == member.user);
            }
        }
    }

    #[test]
    fn a_handed_over_guild_fills_another_cache_with_the_same_values() {
        use twilight_model::channel::permission_overwrite::PermissionOverwriteType;
        let mut guilds = guilds(4);
        // One guild with every optional field this keeps set.
        let rich = &mut guilds[0];
        rich.features = vec![GuildFeature::Community, GuildFeature::Unknown("NEW".into())];
        rich.premium_subscription_count = Some(7);
        rich.premium_tier = PremiumTier::Tier2;
        rich.rules_channel_id = Some(rich.channels[0].id);
        rich.channels[0].topic = Some("the topic".into());
        rich.channels[0].rate_limit_per_user = Some(30);
        rich.channels[0].nsfw = Some(true);
        rich.channels[0].permission_overwrites = Some(vec![PermissionOverwrite {
            allow: Permissions::SEND_MESSAGES,
            deny: Permissions::ATTACH_FILES,
            id: rich.id.cast(),
            kind: PermissionOverwriteType::Role,
        }]);
        let joined = rich.joined_at;
        let person = rich.members.iter_mut().find(|m| !m.user.bot).unwrap();
        person.nick = Some("nick".into());
        person.premium_since = joined;
        person.communication_disabled_until = joined;
        person.user.global_name = Some("Shown".into());
        rich.roles[1].hoist = true;
        rich.roles[1].mentionable = true;
        let old = filled(&guilds);
        let handed: Vec<String> = (0..2)
            .flat_map(|shard| crate::handed::cached_guilds(&old, shard, 2))
            .collect();
        assert_eq!(handed.len(), guilds.len());
        let new = Cache::builder().resource_types(every_kind()).build();
        assert_eq!(crate::handed::restore(&new, &handed), guilds.len());
        for sent in &guilds {
            assert_eq!(*new.guild(sent.id).unwrap(), *old.guild(sent.id).unwrap());
            assert!(*new.guild(sent.id).unwrap() == *sent);
            for channel in &sent.channels {
                assert_eq!(
                    *new.channel(channel.id).unwrap(),
                    *old.channel(channel.id).unwrap()
                );
                assert!(*new.channel(channel.id).unwrap() == *channel);
            }
            for role in &sent.roles {
                assert_eq!(
                    new.role(role.id).unwrap().resource(),
                    old.role(role.id).unwrap().resource()
                );
            }
            for member in &sent.members {
                let user = member.user.id;
                assert_eq!(
                    *new.member(sent.id, user).unwrap(),
                    *old.member(sent.id, user).unwrap()
                );
                assert!(*new.member(sent.id, user).unwrap() == *member);
                assert_eq!(*new.user(user).unwrap(), *old.user(user).unwrap());
                assert!(*new.user(user).unwrap() == member.user);
            }
        }
    }

    #[test]
    fn the_lean_models_serialize_to_json_twilight_reads_as_discords() {
        let guilds = guilds(1);
        let cache = filled(&guilds);
        let sent = &guilds[0];
        let channel = &sent.channels[0];
        let json = serde_json::to_value(cache.channel(channel.id).unwrap().value()).unwrap();
        let read: ChannelModel = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(read.id, channel.id);
        assert_eq!(read.name, channel.name);
        assert_eq!(json["type"], serde_json::json!(0));
        let member = &sent.members[0];
        let json = serde_json::to_value(cache.user(member.user.id).unwrap().value()).unwrap();
        let read: UserModel = serde_json::from_value(json).unwrap();
        assert_eq!(read.name, member.user.name);
        assert_eq!(read.discriminator, member.user.discriminator);
        let json = serde_json::to_value(cache.guild(sent.id).unwrap().value()).unwrap();
        assert_eq!(json["id"], serde_json::json!(sent.id.to_string()));
        assert_eq!(json["name"], serde_json::json!(sent.name));
        assert_eq!(json["member_count"], serde_json::json!(sent.member_count));
        assert_eq!(json["preferred_locale"], serde_json::json!("en-US"));
        let role = &sent.roles[1];
        let json = serde_json::to_value(cache.role(role.id).unwrap().resource()).unwrap();
        assert_eq!(
            json["permissions"],
            serde_json::json!(role.permissions.bits().to_string())
        );
    }

    #[test]
    fn member_events_keep_the_guilds_count_and_the_member() {
        let guilds = guilds(1);
        let cache = filled(&guilds);
        let sent = &guilds[0];
        let mut joining = sent.members[0].clone();
        joining.user.id = Id::new(9_999_999);
        joining.user.name = "joined".to_owned();
        joining.nick = Some("newcomer".to_owned());
        cache.update(&Event::MemberAdd(Box::new(MemberAdd {
            guild_id: sent.id,
            member: joining.clone(),
        })));
        let count = sent.member_count.unwrap();
        assert_eq!(cache.guild(sent.id).unwrap().member_count, Some(count + 1));
        let member = cache.member(sent.id, joining.user.id).unwrap();
        assert_eq!(member.nick.as_deref(), Some("newcomer"));
        assert_eq!(&*cache.user(joining.user.id).unwrap().name, "joined");
    }

    #[test]
    fn a_locale_longer_than_it_keeps_reads_empty() {
        assert_eq!(Locale::of("es-419").as_str(), "es-419");
        assert_eq!(Locale::of("12345678").as_str(), "12345678");
        assert_eq!(Locale::of("123456789").as_str(), "");
    }
}
